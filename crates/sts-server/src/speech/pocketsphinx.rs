//! The few functions of Debian's `libpocketsphinx.so.3` (pocketsphinx 5prealpha, with
//! `libsphinxbase.so.3`) that the recogniser uses, loaded at run time with `libloading`.
//!
//! Signatures from `/usr/include/pocketsphinx/pocketsphinx.h` (5prealpha) and sphinxbase's
//! `cmd_ln.h`. Every pointer handed out by the library stays inside [`Decoder`]; nothing here
//! unwinds into C (no callbacks are registered).

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::ptr::NonNull;
use std::sync::Arc;

use libloading::Library;

use super::SpeechError;

/// Soname of the library (Debian package `libpocketsphinx3`).
pub const LIBRARY: &str = "libpocketsphinx.so.3";
/// Soname of its base library (Debian package `libsphinxbase3`).
pub const BASE_LIBRARY: &str = "libsphinxbase.so.3";
/// Largest block handed to `ps_process_raw` at once.
pub const BLOCK_SAMPLES: usize = 2048;

type CmdLnInit = unsafe extern "C" fn(*mut c_void, *const c_void, c_int, ...) -> *mut c_void;
type CmdLnFree = unsafe extern "C" fn(*mut c_void) -> c_int;
type PsArgs = unsafe extern "C" fn() -> *const c_void;
type PsInit = unsafe extern "C" fn(*mut c_void) -> *mut c_void;
type PsFree = unsafe extern "C" fn(*mut c_void) -> c_int;
type PsStartUtt = unsafe extern "C" fn(*mut c_void) -> c_int;
type PsProcessRaw = unsafe extern "C" fn(*mut c_void, *const i16, usize, c_int, c_int) -> c_int;
type PsEndUtt = unsafe extern "C" fn(*mut c_void) -> c_int;
type PsGetHyp = unsafe extern "C" fn(*mut c_void, *mut i32) -> *const c_char;

/// The loaded libraries and their entry points. The function pointers stay valid as long as
/// the `Library` values they came from, which this struct owns and never unloads early.
pub struct PocketSphinx {
    cmd_ln_init: CmdLnInit,
    cmd_ln_free_r: CmdLnFree,
    ps_args: PsArgs,
    ps_init: PsInit,
    ps_free: PsFree,
    ps_start_utt: PsStartUtt,
    ps_process_raw: PsProcessRaw,
    ps_end_utt: PsEndUtt,
    ps_get_hyp: PsGetHyp,
    _pocketsphinx: Library,
    _sphinxbase: Library,
}

fn missing_library(soname: &str, package: &'static str, e: libloading::Error) -> SpeechError {
    SpeechError::Missing {
        package,
        detail: format!("cannot load {soname}: {e}"),
    }
}

impl PocketSphinx {
    /// Loads the two libraries by soname.
    pub fn load() -> Result<Arc<PocketSphinx>, SpeechError> {
        // SAFETY: loading a shared library runs its initialisers; Debian's sphinxbase and
        // pocketsphinx have no initialisers with preconditions.
        let sphinxbase = unsafe { Library::new(BASE_LIBRARY) }
            .map_err(|e| missing_library(BASE_LIBRARY, "libsphinxbase3", e))?;
        // SAFETY: as above.
        let pocketsphinx = unsafe { Library::new(LIBRARY) }
            .map_err(|e| missing_library(LIBRARY, "libpocketsphinx3", e))?;
        macro_rules! symbol {
            ($lib:expr, $name:literal, $ty:ty) => {{
                // SAFETY: the symbol is the C function of that name in the 5prealpha API and
                // `$ty` is its signature; the pointer is only used while the library is
                // loaded (it is stored next to the `Library`).
                let f: $ty =
                    *unsafe { $lib.get::<$ty>(concat!($name, "\0").as_bytes()) }.map_err(|e| {
                        SpeechError::Failed(format!("{}: no symbol {}: {e}", LIBRARY, $name))
                    })?;
                f
            }};
        }
        Ok(Arc::new(PocketSphinx {
            cmd_ln_init: symbol!(sphinxbase, "cmd_ln_init", CmdLnInit),
            cmd_ln_free_r: symbol!(sphinxbase, "cmd_ln_free_r", CmdLnFree),
            ps_args: symbol!(pocketsphinx, "ps_args", PsArgs),
            ps_init: symbol!(pocketsphinx, "ps_init", PsInit),
            ps_free: symbol!(pocketsphinx, "ps_free", PsFree),
            ps_start_utt: symbol!(pocketsphinx, "ps_start_utt", PsStartUtt),
            ps_process_raw: symbol!(pocketsphinx, "ps_process_raw", PsProcessRaw),
            ps_end_utt: symbol!(pocketsphinx, "ps_end_utt", PsEndUtt),
            ps_get_hyp: symbol!(pocketsphinx, "ps_get_hyp", PsGetHyp),
            _pocketsphinx: pocketsphinx,
            _sphinxbase: sphinxbase,
        }))
    }
}

/// One pocketsphinx decoder (`ps_decoder_t`). Not `Sync`: one thread at a time uses it.
pub struct Decoder {
    lib: Arc<PocketSphinx>,
    ps: NonNull<c_void>,
}

// SAFETY: a `ps_decoder_t` has no thread affinity; it may move between threads as long as
// one thread at a time uses it, which `&mut self` on every call ensures.
unsafe impl Send for Decoder {}

impl Decoder {
    /// `ps_init` with `args` (pairs of `-name`, `value`).
    pub fn new(lib: Arc<PocketSphinx>, args: &[(&str, &str)]) -> Result<Decoder, SpeechError> {
        let owned: Vec<CString> = args
            .iter()
            .flat_map(|(k, v)| [*k, *v])
            .map(|s| {
                CString::new(s)
                    .map_err(|_| SpeechError::Failed(format!("decoder argument {s:?} has a NUL")))
            })
            .collect::<Result<_, _>>()?;
        let mut ptrs: Vec<*const c_char> = owned.iter().map(|s| s.as_ptr()).collect();
        // cmd_ln_init takes a fixed number of variadic strings, NULL-terminated; pad to a fixed
        // arity so one call site covers every argument list.
        const MAX_ARGS: usize = 16;
        if ptrs.len() > MAX_ARGS {
            return Err(SpeechError::Failed("too many decoder arguments".into()));
        }
        ptrs.resize(MAX_ARGS + 1, std::ptr::null());
        let p = &ptrs;
        // SAFETY: `ps_args()` returns the static argument table; `cmd_ln_init` reads the
        // NUL-terminated strings up to the first NULL (they live in `owned` until the end of
        // this function, and cmd_ln_init copies them), strict = TRUE.
        let config = unsafe {
            (lib.cmd_ln_init)(
                std::ptr::null_mut(),
                (lib.ps_args)(),
                1,
                p[0],
                p[1],
                p[2],
                p[3],
                p[4],
                p[5],
                p[6],
                p[7],
                p[8],
                p[9],
                p[10],
                p[11],
                p[12],
                p[13],
                p[14],
                p[15],
                p[16],
            )
        };
        if config.is_null() {
            return Err(SpeechError::Failed(
                "pocketsphinx refused its configuration (cmd_ln_init)".into(),
            ));
        }
        // SAFETY: `config` is a valid cmd_ln_t; ps_init retains it, so we release our
        // reference right after.
        let ps = unsafe { (lib.ps_init)(config) };
        // SAFETY: our reference to `config`, released once.
        unsafe { (lib.cmd_ln_free_r)(config) };
        let ps = NonNull::new(ps).ok_or_else(|| {
            SpeechError::Failed("pocketsphinx could not load its model (ps_init)".into())
        })?;
        Ok(Decoder { lib, ps })
    }

    /// Decodes `samples` (16 kHz mono) as one utterance and returns the hypothesis (empty when
    /// nothing was recognised). The decoder's state that carries over between utterances
    /// (cepstral mean, AGC) is kept for the next call.
    /// Decodes `samples` (16 kHz mono) as one utterance and returns the hypothesis (empty when
    /// nothing was recognised). The decoder's state that carries over between utterances
    /// (cepstral mean, AGC) is kept for the next call. Stops with [`SpeechError::Timeout`] when
    /// `stop` says so before a block (the utterance is ended, the decoder stays usable).
    pub fn decode_utterance_until(
        &mut self,
        samples: &[i16],
        stop: &dyn Fn() -> bool,
    ) -> Result<String, SpeechError> {
        let ps = self.ps.as_ptr();
        // SAFETY: `ps` is a live decoder used by this thread only (`&mut self`).
        if unsafe { (self.lib.ps_start_utt)(ps) } < 0 {
            return Err(SpeechError::Failed("ps_start_utt failed".into()));
        }
        for (i, block) in samples.chunks(BLOCK_SAMPLES).enumerate() {
            if stop() {
                // SAFETY: ends the utterance started above, so the decoder stays usable.
                unsafe { (self.lib.ps_end_utt)(ps) };
                return Err(SpeechError::Timeout(format!(
                    "speech recognition stopped after {} of {} samples",
                    i * BLOCK_SAMPLES,
                    samples.len()
                )));
            }
            // SAFETY: `block` is a valid slice of `block.len()` samples for the whole call.
            let r = unsafe { (self.lib.ps_process_raw)(ps, block.as_ptr(), block.len(), 0, 0) };
            if r < 0 {
                // SAFETY: ends the utterance started above, so the decoder stays usable.
                unsafe { (self.lib.ps_end_utt)(ps) };
                return Err(SpeechError::Failed("ps_process_raw failed".into()));
            }
        }
        // SAFETY: ends the utterance started above.
        if unsafe { (self.lib.ps_end_utt)(ps) } < 0 {
            return Err(SpeechError::Failed("ps_end_utt failed".into()));
        }
        let mut score = 0i32;
        // SAFETY: the returned string is owned by the decoder and valid until its next call;
        // it is copied at once.
        let hyp = unsafe { (self.lib.ps_get_hyp)(ps, &mut score) };
        if hyp.is_null() {
            return Ok(String::new());
        }
        // SAFETY: non-null, NUL-terminated, valid until the next decoder call (see above).
        let text = unsafe { CStr::from_ptr(hyp) }
            .to_string_lossy()
            .into_owned();
        Ok(text)
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: our own reference to the decoder, released once.
        unsafe { (self.lib.ps_free)(self.ps.as_ptr()) };
    }
}
