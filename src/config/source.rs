//! Where a setting's value comes from: the flag, the environment, the TOML
//! file, or the table's default, each read once and parsed once.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::ArgMatches;

use super::{spec, ConfigError, Spec, SETTINGS};

#[derive(Debug, Clone)]
enum Origin {
    Flag,
    Env(&'static str),
    File(PathBuf),
    Default,
}

impl Origin {
    fn describe(&self, spec: &Spec) -> String {
        match self {
            Origin::Flag => format!("--{}", spec.key.replace('_', "-")),
            Origin::Env(name) => (*name).to_string(),
            Origin::File(p) => format!("{} in {}", spec.key, p.display()),
            Origin::Default => format!("the default of {}", spec.key),
        }
    }
}

/// Reads each setting once, in order of precedence: the flag, the
/// environment (`CVMD_*`, then the envbox alias), the TOML file, then the
/// table's default; every bad value becomes one problem naming where it
/// came from.
pub(super) struct Resolver<'a> {
    matches: &'a ArgMatches,
    env: &'a dyn Fn(&str) -> Option<String>,
    file: BTreeMap<String, String>,
    file_path: PathBuf,
    pub(super) problems: Vec<String>,
}

impl<'a> Resolver<'a> {
    pub(super) fn new(matches: &'a ArgMatches, env: &'a dyn Fn(&str) -> Option<String>) -> Self {
        let mut r = Resolver {
            matches,
            env,
            file: BTreeMap::new(),
            file_path: PathBuf::new(),
            problems: Vec::new(),
        };
        if let Some((path, _)) = r.given(spec("config")) {
            match load_file(&path) {
                Ok(file) => r.file = file,
                Err(e) => r.problems.push(e),
            }
            r.file_path = PathBuf::from(path);
        }
        r
    }

    /// The flag's or the environment's value (an empty variable is unset).
    fn given(&self, spec: &Spec) -> Option<(String, Origin)> {
        if let Some(v) = self.matches.try_get_one::<String>(spec.key).ok().flatten() {
            return Some((v.clone(), Origin::Flag));
        }
        let env = |name: &'static str| {
            (self.env)(name)
                .filter(|v| !v.is_empty())
                .map(|v| (v, Origin::Env(name)))
        };
        env(spec.env).or_else(|| spec.envbox.and_then(env))
    }

    fn raw(&self, spec: &Spec) -> Option<(String, Origin)> {
        self.given(spec)
            .or_else(|| {
                let v = self.file.get(spec.key)?;
                Some((v.clone(), Origin::File(self.file_path.clone())))
            })
            .or_else(|| spec.default.map(|d| (d.to_string(), Origin::Default)))
    }

    /// The setting parsed; `None` when it is unset and has no default, or
    /// when it is bad (then a problem is noted).
    pub(super) fn opt<T>(
        &mut self,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let spec = spec(key);
        let (value, origin) = self.raw(spec)?;
        match parse(&value) {
            Ok(v) => Some(v),
            Err(why) => {
                self.problems
                    .push(format!("invalid {}: {why}", origin.describe(spec)));
                None
            }
        }
    }

    /// A setting with a default in the table. When its value is bad, the
    /// problem is noted and the default stands in: resolving fails anyway,
    /// so it is never used.
    pub(super) fn get<T>(&mut self, key: &str, parse: impl Fn(&str) -> Result<T, String>) -> T {
        if let Some(v) = self.opt(key, &parse) {
            return v;
        }
        let default = spec(key)
            .default
            .unwrap_or_else(|| panic!("setting {key} has no default in SETTINGS"));
        parse(default).unwrap_or_else(|e| panic!("the default of {key} is bad: {e}"))
    }

    pub(super) fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.problems.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError {
                problems: self.problems,
            })
        }
    }
}

/// The TOML file as key -> value string; lists are joined with ','.
fn load_file(path: &str) -> Result<BTreeMap<String, String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {path}: {e}"))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("config file {path}: {}", e.message()))?;
    let mut out = BTreeMap::new();
    for (key, value) in table {
        if key == "config" || !SETTINGS.iter().any(|s| s.key == key) {
            let known: Vec<&str> = SETTINGS
                .iter()
                .map(|s| s.key)
                .filter(|k| *k != "config")
                .collect();
            return Err(format!(
                "config file {path}: unknown setting {key:?} (known: {})",
                known.join(", ")
            ));
        }
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .into_iter()
                .map(|i| match i {
                    toml::Value::String(s) => Ok(s),
                    other => Err(format!(
                        "config file {path}: {key} must list strings, found {other}"
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            other => {
                return Err(format!(
                    "config file {path}: {key} has an unsupported value {other}"
                ))
            }
        };
        out.insert(key, text);
    }
    Ok(out)
}
