//! The command's config file format: TOML (`handoff run --config handoff.toml`).
//!
//! The library reads the file (and re-reads it on reload) and checks the settings; the
//! text format is the command's, so that a program embedding the library does not
//! carry a TOML parser it does not use.

use handoff::config::ConfigFile;

/// Parses a config file's text; unknown keys are errors that name the key.
pub(crate) fn parse(text: &str) -> Result<ConfigFile, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use handoff::config::MasterSched;
    use handoff::policy::Policy;

    use super::*;

    #[test]
    fn toml_keys_and_errors() {
        let f: ConfigFile = toml::from_str("workers = 3\npolicy = \"p2c\"\nlisten = [\"unix:/tmp/a.sock\"]\n").unwrap();
        let c = f.resolve().unwrap();
        assert_eq!((c.workers, c.policy), (3, Policy::P2c));
        let e = toml::from_str::<ConfigFile>("wrokers = 3").unwrap_err().to_string();
        assert!(e.contains("unknown field `wrokers`"), "{e}");
        let e = toml::from_str::<ConfigFile>("policy = \"fastest\"").unwrap_err().to_string();
        assert!(e.contains("fastest"), "{e}");
        // The master's scheduling: batch unless asked otherwise.
        assert_eq!(ConfigFile::default().resolve().unwrap().master_sched, MasterSched::Batch);
        let f: ConfigFile = toml::from_str("master-sched = \"inherit\"").unwrap();
        assert_eq!(f.resolve().unwrap().master_sched, MasterSched::Inherit);
        let e = toml::from_str::<ConfigFile>("master-sched = \"fifo\"").unwrap_err().to_string();
        assert!(e.contains("fifo"), "{e}");
    }
}
