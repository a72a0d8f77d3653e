//! Loading: built-in defaults, then the file, then `WSECHOD_<SECTION>__<KEY>` environment
//! variables, merged by the `config` crate; then a check that every section and key exists;
//! then deserialization into [`Config`]; then [`Config::validate`].
//!
//! Every error names where the offending value came from (the file or the environment
//! variable) and its key, so the operator can fix it without guessing. Unknown keys are found
//! by walking the merged tree against the schema ([`Config::schema`]), not by reading serde's
//! messages.

use std::fmt;
use std::path::{Path, PathBuf};

use super::validate::{Invalid, Problem};
use super::{Config, ENV_PREFIX};

/// A configuration error, ready to show to an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, the environment variable, or the command line the problem comes from.
    pub origin: String,
    /// The dotted key (`server.path`), if the problem is about one key.
    pub key: Option<String>,
    /// What is wrong.
    pub kind: ErrorKind,
}

/// The kinds of configuration error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// The file is missing or cannot be read.
    Io(String),
    /// The file is not valid TOML.
    Syntax(String),
    /// A section that does not exist.
    UnknownSection,
    /// A key that does not exist in its section.
    UnknownKey,
    /// A value of the wrong type or form.
    Value(String),
    /// A value that loads but cannot be served.
    Invalid(Problem),
    /// A file that a key names (a certificate, a key) is unusable.
    File(String),
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Io(m) | ErrorKind::Value(m) | ErrorKind::File(m) => f.write_str(m),
            ErrorKind::Syntax(m) => write!(f, "not valid TOML: {m}"),
            ErrorKind::UnknownSection => f.write_str("unknown section"),
            ErrorKind::UnknownKey => f.write_str("unknown key"),
            ErrorKind::Invalid(p) => p.fmt(f),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: key `{key}`: {}", self.origin, self.kind),
            None => write!(f, "{}: {}", self.origin, self.kind),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Which file to read, and whether its absence is an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPath {
    /// The path.
    pub path: PathBuf,
    /// Given with `--config`: then a missing file is an error.
    pub explicit: bool,
}

impl ConfigPath {
    /// The path to use for an optional `--config` argument.
    pub fn new(arg: Option<PathBuf>) -> Self {
        match arg {
            Some(path) => Self {
                path,
                explicit: true,
            },
            None => Self {
                path: PathBuf::from(super::DEFAULT_PATH),
                explicit: false,
            },
        }
    }
}

/// A loaded, validated configuration and whether the file existed.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The effective configuration.
    pub config: Config,
    /// False when the default path did not exist and built-in defaults were used.
    pub file_found: bool,
}

/// Reads the file at `path` (if it exists) and the process environment, then validates.
pub fn load(path: &ConfigPath) -> Result<Loaded, ConfigError> {
    load_with_env(path, std::env::vars())
}

/// [`load`] with an explicit environment, so tests need not touch the process's.
pub fn load_with_env(
    path: &ConfigPath,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    let file_found = path.path.exists();
    if !file_found && path.explicit {
        return Err(ConfigError {
            origin: path.path.display().to_string(),
            key: None,
            kind: ErrorKind::Io("no such file".into()),
        });
    }
    let prefix = format!("{ENV_PREFIX}_");
    let env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .collect();
    let sources = Sources {
        file: file_found.then(|| path.path.clone()),
        env: env.iter().map(|(k, _)| k.clone()).collect(),
    };

    let mut builder = config::Config::builder();
    if let Some(file) = &sources.file {
        // Read it ourselves: a clear I/O error, and special files such as /dev/null work.
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            origin: file.display().to_string(),
            key: None,
            kind: ErrorKind::Io(format!("cannot read: {e}")),
        })?;
        builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
    }
    let mut environment = config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("_")
        .separator("__")
        .list_separator(",")
        .try_parsing(true)
        .source(Some(env.into_iter().collect()));
    for key in list_keys() {
        environment = environment.with_list_parse_key(&key);
    }
    let merged = builder
        .add_source(environment)
        .build()
        .map_err(|e| sources.translate(e))?;
    sources.check_keys(&merged)?;
    let config: Config = merged.try_deserialize().map_err(|e| sources.translate(e))?;
    config.validate().map_err(|e| sources.invalid(e))?;
    Ok(Loaded { config, file_found })
}

/// Every key whose value is a list, as `section.key`: the environment splits these at commas.
pub fn list_keys() -> Vec<String> {
    Config::schema()
        .iter()
        .flat_map(|(section, keys)| {
            keys.as_table()
                .into_iter()
                .flatten()
                .filter(|(_, v)| v.is_array())
                .map(move |(k, _)| format!("{section}.{k}"))
        })
        .collect()
}

/// What went into a merge, to name the origin of a bad value.
struct Sources {
    file: Option<PathBuf>,
    env: Vec<String>,
}

impl Sources {
    /// The environment variable that sets `key`, if any, else the file.
    fn origin_of(&self, key: &str) -> String {
        let var = env_var_for(key);
        if self.env.iter().any(|k| k.eq_ignore_ascii_case(&var)) {
            return format!("environment variable {var}");
        }
        match &self.file {
            Some(file) => file.display().to_string(),
            None => "built-in defaults".into(),
        }
    }

    fn error(&self, key: Option<String>, kind: ErrorKind) -> ConfigError {
        ConfigError {
            origin: self.origin_of(key.as_deref().unwrap_or("")),
            key,
            kind,
        }
    }

    fn invalid(&self, e: Invalid) -> ConfigError {
        self.error(Some(e.key.to_string()), ErrorKind::Invalid(e.problem))
    }

    /// Every section and key of the merged tree must exist in the schema.
    fn check_keys(&self, merged: &config::Config) -> Result<(), ConfigError> {
        let schema = Config::schema();
        let tree = merged
            .clone()
            .try_deserialize::<config::Map<String, config::Value>>()
            .map_err(|e| self.error(None, ErrorKind::Value(e.to_string())))?;
        let mut sections: Vec<_> = tree.into_iter().collect();
        sections.sort_by(|a, b| a.0.cmp(&b.0));
        for (section, value) in sections {
            let Some(known) = schema.get(&section).and_then(toml::Value::as_table) else {
                return Err(self.error(Some(section), ErrorKind::UnknownSection));
            };
            let keys = value.into_table().map_err(|e| {
                self.error(
                    Some(section.clone()),
                    ErrorKind::Value(format!("a section must be a table: {e}")),
                )
            })?;
            let mut keys: Vec<_> = keys.into_keys().collect();
            keys.sort();
            if let Some(key) = keys.into_iter().find(|k| !known.contains_key(k)) {
                return Err(self.error(Some(format!("{section}.{key}")), ErrorKind::UnknownKey));
            }
        }
        Ok(())
    }

    fn translate(&self, e: config::ConfigError) -> ConfigError {
        use config::ConfigError as E;
        match e {
            E::FileParse { uri, cause } => ConfigError {
                origin: uri.unwrap_or_else(|| self.origin_of("")),
                key: None,
                kind: ErrorKind::Syntax(cause.to_string()),
            },
            E::Type {
                unexpected,
                expected,
                key,
                ..
            } => self.error(
                key,
                ErrorKind::Value(format!("invalid type: {unexpected}, expected {expected}")),
            ),
            E::At { error, key, .. } => {
                let message = match *error {
                    E::Message(m) => m,
                    other => other.to_string(),
                };
                self.error(key, ErrorKind::Value(message))
            }
            other => self.error(None, ErrorKind::Value(other.to_string())),
        }
    }
}

/// `server.max_connections` → `WSECHOD_SERVER__MAX_CONNECTIONS`.
pub fn env_var_for(key: &str) -> String {
    format!(
        "{ENV_PREFIX}_{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
}

/// Gives a path for logs: the file's, or a note that none was read.
pub fn describe(path: &Path, found: bool) -> String {
    if found {
        path.display().to_string()
    } else {
        format!("built-in defaults ({} not found)", path.display())
    }
}
