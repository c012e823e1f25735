//! The few functions of Debian's `libespeak-ng.so.1` that the synthesiser uses, loaded at run
//! time with `libloading`. Signatures from `/usr/include/espeak-ng/speak_lib.h`.
//!
//! espeak-ng keeps global state: every call here must come from one thread (the synthesiser's
//! own thread), which [`super::tts`] guarantees. In `AUDIO_OUTPUT_SYNCHRONOUS` mode the synth
//! callback runs on the calling thread, inside `espeak_Synth`; it appends to a thread-local
//! buffer and cannot unwind (it catches any panic and stops the synthesis).

use std::cell::RefCell;
use std::ffi::{CString, c_char, c_int, c_uint, c_void};

use libloading::Library;

use super::SpeechError;

/// Soname of the library (Debian package `libespeak-ng1`).
pub const LIBRARY: &str = "libespeak-ng.so.1";

const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
const ESPEAK_INITIALIZE_DONT_EXIT: c_int = 0x8000;
const ESPEAK_CHARS_UTF8: c_uint = 1;
const POS_CHARACTER: c_int = 1;
const EE_OK: c_int = 0;

type SynthCallback = unsafe extern "C" fn(*mut i16, c_int, *mut c_void) -> c_int;
type Initialize = unsafe extern "C" fn(c_int, c_int, *const c_char, c_int) -> c_int;
type SetSynthCallback = unsafe extern "C" fn(SynthCallback);
type SetVoiceByName = unsafe extern "C" fn(*const c_char) -> c_int;
type Synth = unsafe extern "C" fn(
    *const c_void,
    usize,
    c_uint,
    c_int,
    c_uint,
    c_uint,
    *mut c_uint,
    *mut c_void,
) -> c_int;

thread_local! {
    /// Samples of the synthesis under way on this thread, and the most it may hold.
    static OUTPUT: RefCell<(Vec<i16>, usize)> = const { RefCell::new((Vec::new(), 0)) };
}

/// espeak's synth callback: appends `n` samples; returns 1 (stop) past the limit.
///
/// # Safety
/// Called by espeak-ng with `wav` pointing at `n` samples (or null).
unsafe extern "C" fn on_samples(wav: *mut i16, n: c_int, _events: *mut c_void) -> c_int {
    let result = std::panic::catch_unwind(|| {
        if wav.is_null() || n <= 0 {
            return 0;
        }
        // SAFETY: espeak-ng hands `n` valid samples at `wav` for the duration of the call.
        let block = unsafe { std::slice::from_raw_parts(wav, n as usize) };
        OUTPUT.with(|o| {
            let (buf, limit) = &mut *o.borrow_mut();
            if buf.len() + block.len() > *limit {
                1
            } else {
                buf.extend_from_slice(block);
                0
            }
        })
    });
    result.unwrap_or(1)
}

/// An initialised espeak-ng. Not `Send`: it stays on the thread that created it.
pub struct Espeak {
    set_voice_by_name: SetVoiceByName,
    synth: Synth,
    sample_rate: u32,
    _lib: Library,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Espeak {
    /// Loads the library and initialises it in synchronous mode (one instance per process:
    /// call from the synthesiser thread only).
    pub fn load() -> Result<Espeak, SpeechError> {
        // SAFETY: loading the library runs its initialisers, which have no preconditions.
        let lib = unsafe { Library::new(LIBRARY) }.map_err(|e| SpeechError::Missing {
            package: "libespeak-ng1",
            detail: format!("cannot load {LIBRARY}: {e}"),
        })?;
        macro_rules! symbol {
            ($name:literal, $ty:ty) => {{
                // SAFETY: the espeak-ng function of that name has signature `$ty`
                // (speak_lib.h); the pointer is used only while `lib` is loaded.
                let f: $ty =
                    *unsafe { lib.get::<$ty>(concat!($name, "\0").as_bytes()) }.map_err(|e| {
                        SpeechError::Failed(format!("{LIBRARY}: no symbol {}: {e}", $name))
                    })?;
                f
            }};
        }
        let initialize = symbol!("espeak_Initialize", Initialize);
        let set_callback = symbol!("espeak_SetSynthCallback", SetSynthCallback);
        let set_voice_by_name = symbol!("espeak_SetVoiceByName", SetVoiceByName);
        let synth = symbol!("espeak_Synth", Synth);
        // SAFETY: synchronous output, default buffer, default data path (NULL), and
        // DONT_EXIT so a data error returns instead of ending the process.
        let rate = unsafe {
            initialize(
                AUDIO_OUTPUT_SYNCHRONOUS,
                0,
                std::ptr::null(),
                ESPEAK_INITIALIZE_DONT_EXIT,
            )
        };
        if rate <= 0 {
            return Err(SpeechError::Missing {
                package: "espeak-ng-data",
                detail: format!("espeak_Initialize failed ({rate}): is its data installed?"),
            });
        }
        // SAFETY: `on_samples` matches t_espeak_callback and never unwinds.
        unsafe { set_callback(on_samples) };
        Ok(Espeak {
            set_voice_by_name,
            synth,
            sample_rate: rate as u32,
            _lib: lib,
            _not_send: std::marker::PhantomData,
        })
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Selects a voice by name (`"es"`, `"ca"`, …).
    pub fn set_voice(&self, name: &str) -> Result<(), SpeechError> {
        let c = CString::new(name)
            .map_err(|_| SpeechError::Failed(format!("voice name {name:?} has a NUL")))?;
        // SAFETY: a NUL-terminated string valid for the call.
        let r = unsafe { (self.set_voice_by_name)(c.as_ptr()) };
        if r == EE_OK {
            Ok(())
        } else {
            Err(SpeechError::Failed(format!(
                "espeak-ng has no voice {name:?} ({r})"
            )))
        }
    }

    /// Synthesises `text` with the current voice; at most `max_samples` samples.
    pub fn synthesize(&self, text: &str, max_samples: usize) -> Result<Vec<i16>, SpeechError> {
        let c = CString::new(text.replace('\0', " ")).expect("NULs replaced");
        OUTPUT.with(|o| *o.borrow_mut() = (Vec::new(), max_samples));
        let bytes = c.as_bytes_with_nul();
        // SAFETY: `c` is a NUL-terminated UTF-8 string valid for the call; synchronous mode
        // returns when the synthesis is done, having called `on_samples` on this thread.
        let r = unsafe {
            (self.synth)(
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                POS_CHARACTER,
                0,
                ESPEAK_CHARS_UTF8,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        let samples = OUTPUT.with(|o| std::mem::take(&mut o.borrow_mut().0));
        if r != EE_OK {
            return Err(SpeechError::Failed(format!("espeak_Synth failed ({r})")));
        }
        Ok(samples)
    }
}
