//! Word error rate: the measure of recognition quality the tests report.

/// Lower-cases `text` and splits it into words: letters, digits and in-word apostrophes
/// (`o'clock`, `don't`); everything else (punctuation, hyphens, spaces) separates words.
pub fn normalize_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let in_word_apostrophe = matches!(c, '\'' | '’')
            && !current.is_empty()
            && chars.get(i + 1).is_some_and(|n| n.is_alphanumeric());
        if c.is_alphanumeric() {
            current.extend(c.to_lowercase());
        } else if in_word_apostrophe {
            current.push('\'');
        } else if !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// Word-level edit distance between a reference and a hypothesis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WordErrors {
    /// Substitutions + deletions + insertions (Levenshtein distance over words).
    pub errors: usize,
    /// Words in the reference.
    pub reference_words: usize,
}

impl WordErrors {
    /// `errors / reference_words`; 0 for an empty reference and hypothesis, 1 for an empty
    /// reference with a non-empty hypothesis.
    pub fn rate(&self) -> f64 {
        if self.reference_words == 0 {
            return if self.errors == 0 { 0.0 } else { 1.0 };
        }
        self.errors as f64 / self.reference_words as f64
    }
}

impl std::ops::Add for WordErrors {
    type Output = WordErrors;
    fn add(self, other: WordErrors) -> WordErrors {
        WordErrors {
            errors: self.errors + other.errors,
            reference_words: self.reference_words + other.reference_words,
        }
    }
}

impl std::iter::Sum for WordErrors {
    fn sum<I: Iterator<Item = WordErrors>>(iter: I) -> WordErrors {
        iter.fold(WordErrors::default(), |a, b| a + b)
    }
}

/// Edit distance between the [`normalize_words`] of `reference` and of `hypothesis`.
pub fn word_errors(reference: &str, hypothesis: &str) -> WordErrors {
    let r = normalize_words(reference);
    let h = normalize_words(hypothesis);
    // One row of the Levenshtein table at a time.
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    let mut row = vec![0; h.len() + 1];
    for (i, rw) in r.iter().enumerate() {
        row[0] = i + 1;
        for (j, hw) in h.iter().enumerate() {
            let substitution = prev[j] + usize::from(rw != hw);
            row[j + 1] = substitution.min(prev[j + 1] + 1).min(row[j] + 1);
        }
        std::mem::swap(&mut prev, &mut row);
    }
    WordErrors {
        errors: prev[h.len()],
        reference_words: r.len(),
    }
}

/// Word error rate of `hypothesis` against `reference` (see [`WordErrors::rate`]).
pub fn word_error_rate(reference: &str, hypothesis: &str) -> f64 {
    word_errors(reference, hypothesis).rate()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_case_punctuation_and_apostrophes() {
        assert_eq!(
            normalize_words("Good evening, and welcome to the six o'clock news!"),
            [
                "good", "evening", "and", "welcome", "to", "the", "six", "o'clock", "news"
            ]
        );
        assert_eq!(
            normalize_words("  'quoted'  well-known  "),
            ["quoted", "well", "known"]
        );
        assert_eq!(normalize_words("Ñandú ÉL"), ["ñandú", "él"]);
        assert!(normalize_words(" ,.! ").is_empty());
    }

    #[test]
    fn counts_substitutions_deletions_insertions() {
        let same = word_errors("the cat sat", "The cat, sat.");
        assert_eq!((same.errors, same.reference_words), (0, 3));
        assert_eq!(word_errors("the cat sat", "the dog sat").errors, 1);
        assert_eq!(word_errors("the cat sat", "the sat").errors, 1);
        assert_eq!(word_errors("the cat sat", "the cat sat down").errors, 1);
        assert_eq!(word_errors("the cat sat", "").errors, 3);
        assert_eq!(word_errors("a b c d", "b c d e").errors, 2);
        assert!((word_error_rate("one two three four", "one too three") - 0.5).abs() < 1e-12);
        assert_eq!(word_error_rate("", ""), 0.0);
        assert_eq!(word_error_rate("", "noise"), 1.0);
        let total: WordErrors = [word_errors("a b", "a"), word_errors("c d e", "c d e")]
            .into_iter()
            .sum();
        assert_eq!((total.errors, total.reference_words), (1, 5));
        assert!((total.rate() - 0.2).abs() < 1e-12);
    }
}
