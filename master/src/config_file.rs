//! The master's config file (`--config FILE`, env `TASKMASTER_CONFIG`):
//! TOML whose keys are the long names of the master's flags
//! (`pool-max = 8`, `insecure = true`).
//!
//! The file is not a second parser beside clap: each key is turned back
//! into a `--key=value` argument and parsed by clap with the real command
//! line, so every flag's own parser and checks apply and the file can
//! never accept what the flag refuses. Precedence (flag > environment >
//! file > default) falls out of clap's value sources: a key only becomes
//! an argument when clap found its flag neither on the command line nor in
//! the environment. Every key is checked even then, so a bad file fails
//! the same way whatever overrides it.

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use std::any::TypeId;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use toml::Value;

/// Flags of the top-level command that are not settings: a file naming
/// its own path, or asking for help, is a mistake worth a clear error.
const NOT_KEYS: [&str; 3] = ["config", "help", "version"];

/// Why a config file was refused. Each renders as one line naming the
/// file (and the key), for the master's one-line usage errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// Missing, unreadable, or not UTF-8.
    #[error("config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not TOML.
    #[error("config file {}: {at}{message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// `line L, column C: ` when the parser said where.
        at: String,
        /// The parser's message, first line.
        message: String,
    },
    /// A key that is not a flag of the master.
    #[error(
        "config file {}: unknown key {key:?} (keys are the master's long flag names, such as pool-max)",
        path.display()
    )]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A value of a TOML type the flag cannot take (`insecure = "yes"`).
    #[error("config file {}: {key}: expected {expected}, got {got}", path.display())]
    WrongType {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What the flag takes.
        expected: &'static str,
        /// What the file has.
        got: &'static str,
    },
    /// A value the flag's own parser refuses.
    #[error("config file {}: {key}: {message}", path.display())]
    BadValue {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// Clap's message, on one line.
        message: String,
    },
}

/// A clap error on one line, without clap's `error: ` prefix and usage
/// block: the first paragraph of its message, whitespace collapsed.
pub fn clap_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.split("\n\n").next().unwrap_or("bad arguments");
    let line = first.split_whitespace().collect::<Vec<_>>().join(" ");
    line.trim_start_matches("error: ").to_owned()
}

/// The arguments the file at `path` adds to the command line: `--key=value`
/// (or `--switch`) for each key whose flag clap found neither on the
/// command line nor in the environment. `cmd` is the top-level command and
/// `matches` what it made of the real command line.
pub fn arguments(
    path: &Path,
    cmd: &Command,
    matches: &ArgMatches,
) -> Result<Vec<OsString>, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let at = e.span().map(|s| line_column(&text, s.start));
        ConfigFileError::Syntax {
            path: path.to_owned(),
            at: at.map_or(String::new(), |(l, c)| format!("line {l}, column {c}: ")),
            message: e.message().lines().next().unwrap_or("not TOML").to_owned(),
        }
    })?;
    let mut out = Vec::new();
    for (key, value) in &table {
        let arg = cmd
            .get_arguments()
            .find(|a| {
                !a.is_positional()
                    && a.get_long() == Some(key.as_str())
                    && !NOT_KEYS.contains(&key.as_str())
            })
            .ok_or_else(|| ConfigFileError::UnknownKey {
                path: path.to_owned(),
                key: key.clone(),
            })?;
        let argument =
            argument(key, arg, value).map_err(|expected| ConfigFileError::WrongType {
                path: path.to_owned(),
                key: key.clone(),
                expected,
                got: type_name(value),
            })?;
        let Some(argument) = argument else { continue };
        // The flag alone in a command of its own: the error (if any) is
        // about this key only, whatever else the command line holds.
        let probe = Command::new("taskmaster")
            .no_binary_name(true)
            .arg(arg.clone());
        if let Err(e) = probe.try_get_matches_from([&argument]) {
            return Err(ConfigFileError::BadValue {
                path: path.to_owned(),
                key: key.clone(),
                message: clap_line(&e),
            });
        }
        let given = matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if !given {
            out.push(argument.into());
        }
    }
    Ok(out)
}

/// The argument a key stands for (`None`: a switch set to false, which
/// is its default), or what the flag takes when the TOML type is wrong.
/// Types are strict where a mistake is likely (a number for a path, a
/// string for a count); the flag's parser judges the text itself.
fn argument(key: &str, arg: &Arg, value: &Value) -> Result<Option<String>, &'static str> {
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        return match value {
            Value::Boolean(true) => Ok(Some(format!("--{key}"))),
            Value::Boolean(false) => Ok(None),
            _ => Err("true or false"),
        };
    }
    let ty = arg.get_value_parser().type_id();
    let is = |t: TypeId| ty == t;
    let (text, expected) = if is(TypeId::of::<String>()) || is(TypeId::of::<PathBuf>()) {
        (value.as_str().map(str::to_owned), "a string")
    } else if is(TypeId::of::<usize>()) || is(TypeId::of::<u64>()) || is(TypeId::of::<u32>()) {
        (value.as_integer().map(|n| n.to_string()), "an integer")
    } else if is(TypeId::of::<f64>()) {
        let number = match value {
            Value::Integer(n) => Some(n.to_string()),
            Value::Float(x) => Some(x.to_string()),
            _ => None,
        };
        (number, "a number")
    } else {
        // A flag with a parser of its own (`prefetch = "auto"` or `4`).
        let either = match value {
            Value::String(s) => Some(s.clone()),
            Value::Integer(n) => Some(n.to_string()),
            Value::Float(x) => Some(x.to_string()),
            _ => None,
        };
        (either, "a string or a number")
    };
    match text {
        Some(text) => Ok(Some(format!("--{key}={text}"))),
        None => Err(expected),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    fn cli() -> Command {
        crate::cli::Cli::command()
    }

    /// What a file holding `toml` adds to `args` (the command line).
    fn with_file(toml: &str, args: &[&str]) -> Result<Vec<String>, String> {
        let path = std::env::temp_dir().join(format!(
            "taskmaster-config-unit-{}-{:?}.toml",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, toml).unwrap();
        let matches = cli()
            .try_get_matches_from(std::iter::once("taskmaster").chain(args.iter().copied()))
            .unwrap();
        let r = arguments(&path, &cli(), &matches);
        let _ = std::fs::remove_file(&path);
        r.map(|v| v.into_iter().map(|a| a.into_string().unwrap()).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn keys_become_arguments_unless_the_command_line_has_them() {
        let got = with_file(
            "pool-max = 8\ngrace = 2.5\ninsecure = true\nforget-answered = false\nprefetch = \"auto\"\nhttp = \"127.0.0.1:0\"\n",
            &["--pool-max", "3"],
        )
        .unwrap();
        assert_eq!(
            got,
            [
                "--grace=2.5",
                "--http=127.0.0.1:0",
                "--insecure",
                "--prefetch=auto"
            ]
        );
        let merged = cli()
            .try_get_matches_from(
                ["taskmaster"]
                    .into_iter()
                    .chain(got.iter().map(String::as_str))
                    .chain(["--pool-max", "3"]),
            )
            .unwrap();
        let parsed = crate::cli::Cli::from_arg_matches(&merged).unwrap();
        assert_eq!(parsed.serve.pool_max, 3);
        assert_eq!(parsed.serve.grace, 2.5);
        assert!(parsed.serve.insecure);
    }

    #[test]
    fn bad_files_are_one_line_naming_the_key() {
        for (toml, needle) in [
            ("no-such = 1", "unknown key \"no-such\""),
            ("config = \"x.toml\"", "unknown key \"config\""),
            ("connect = \"127.0.0.1:1\"", "unknown key \"connect\""),
            (
                "pool-max = \"8\"",
                "pool-max: expected an integer, got a string",
            ),
            (
                "insecure = 1",
                "insecure: expected true or false, got an integer",
            ),
            ("listen = 7400", "listen: expected a string, got an integer"),
            ("grace = -1", "grace: invalid value '-1'"),
            ("prefetch = 0", "prefetch: invalid value '0'"),
            ("pool-max = -1", "pool-max: invalid value '-1'"),
            (
                "pool-max = [1]",
                "pool-max: expected an integer, got an array",
            ),
            ("pool-max = \n", "line 1, column"),
        ] {
            let err = with_file(toml, &[]).unwrap_err();
            assert!(err.contains(needle), "{toml:?}: {err:?} lacks {needle:?}");
            assert!(err.starts_with("config file "), "{err}");
            assert_eq!(err.lines().count(), 1, "{err:?}");
        }
    }
}
