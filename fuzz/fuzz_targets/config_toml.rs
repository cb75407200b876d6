//! The configuration file: arbitrary TOML never panics the parser or the validation
//! (`resolve` may look at the filesystem for `static` and `command`; that is fine).
#![no_main]

use handoff::config::ConfigFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(file) = toml::from_str::<ConfigFile>(text) {
        if let Ok(config) = file.clone().or(ConfigFile::default()).resolve() {
            assert!(config.workers >= 1 && !config.listen.is_empty());
        }
    }
});
