//! `--config FILE`: a TOML file whose keys are the long flags (`port =
//! 8080`, `no-files = true`, `proxy = ["/api=http://10.0.0.2:9000"]`;
//! `_` may stand for `-`). Each key becomes the flag's arguments, placed
//! before the command line's, so a flag given on the command line wins
//! (and replaces the file's values of a repeatable flag). An unknown key
//! or a bad value is an error that names the file, line and key.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command, CommandFactory, Parser};
use toml::{Spanned, Value};

use super::Args;

/// One key of the file, as flag arguments.
#[derive(Debug)]
struct Entry {
    /// The flag's id (the field name).
    id: String,
    args: Vec<String>,
}

/// The command line with the file's flags placed in front, for the flags
/// the command line does not give itself.
pub fn merge(
    argv: &[OsString],
    matches: &ArgMatches,
    path: &Path,
) -> Result<Vec<OsString>, String> {
    let entries = read(path)?;
    let mut out = argv[..1].to_vec();
    for e in entries {
        if matches.value_source(&e.id) != Some(ValueSource::CommandLine) {
            out.extend(e.args.into_iter().map(OsString::from));
        }
    }
    out.extend(argv[1..].iter().cloned());
    Ok(out)
}

fn read(path: &Path) -> Result<Vec<Entry>, String> {
    let name = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("--config {name}: {e}"))?;
    let table: BTreeMap<Spanned<String>, Spanned<Value>> = toml::from_str(&text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(&text, s.start));
        format!("{name}:{line}: {}", e.message().trim())
    })?;
    let command = Args::command();
    let mut entries = Vec::with_capacity(table.len());
    for (key, value) in table {
        let line = line_of(&text, key.span().start);
        let at = |why: String| format!("{name}:{line}: {}: {why}", key.get_ref());
        let entry = entry(&command, key.get_ref(), value.get_ref()).map_err(at)?;
        check(&entry).map_err(at)?;
        entries.push(entry);
    }
    Ok(entries)
}

/// The flag arguments of one key.
fn entry(command: &Command, key: &str, value: &Value) -> Result<Entry, String> {
    let long = key.replace('_', "-");
    let arg = command
        .get_arguments()
        .find(|a| a.get_long() == Some(long.as_str()))
        .filter(|a| !matches!(a.get_id().as_str(), "config_file" | "help" | "version"))
        .ok_or_else(|| "unknown key (keys are the long flags of coreloop --help)".to_string())?;
    let flag = format!("--{long}");
    let mut args = Vec::new();
    let takes_value = !matches!(arg.get_action(), ArgAction::SetTrue);
    let optional_value = arg.get_num_args().is_some_and(|n| n.min_values() == 0);
    let values = match value {
        Value::Array(items) if matches!(arg.get_action(), ArgAction::Append) => items.clone(),
        Value::Array(_) => return Err("takes one value, not a list".into()),
        one => vec![one.clone()],
    };
    for v in values {
        match v {
            Value::Boolean(on) if !takes_value || optional_value => {
                if on {
                    args.push(flag.clone());
                }
            }
            Value::Boolean(_) => return Err("takes a value, not true or false".into()),
            _ if !takes_value => return Err("is a switch: true or false".into()),
            Value::String(s) => args.extend([flag.clone(), s]),
            Value::Integer(n) => args.extend([flag.clone(), n.to_string()]),
            Value::Float(f) => args.extend([flag.clone(), f.to_string()]),
            Value::Datetime(_) | Value::Array(_) | Value::Table(_) => {
                return Err("expects a string, a number or a boolean".into())
            }
        }
    }
    Ok(Entry {
        id: arg.get_id().to_string(),
        args,
    })
}

/// Parses the key alone, so a bad value is reported against its line
/// (rules between flags, such as one requiring another, are left to the
/// whole command line).
fn check(entry: &Entry) -> Result<(), String> {
    let argv = std::iter::once("coreloop").chain(entry.args.iter().map(String::as_str));
    match Args::try_parse_from(argv) {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::MissingRequiredArgument | ErrorKind::ArgumentConflict
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(one_line(&e.to_string())),
    }
}

fn one_line(text: &str) -> String {
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or(text);
    first.trim().trim_start_matches("error: ").to_string()
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(text: &str) -> Result<Vec<Entry>, String> {
        let dir = std::env::temp_dir().join(format!(
            "coreloop-config-{}-{}.toml",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&dir, text).unwrap();
        let out = read(&dir);
        let _ = std::fs::remove_file(&dir);
        out.map_err(|e| {
            e.rsplit_once(".toml:")
                .map(|(_, r)| r.to_string())
                .unwrap_or(e)
        })
    }

    #[test]
    fn keys_become_flags() {
        let got = entries(
            "# a comment\nport = 9000\nno_files = true\ndir-listing = false\n\
             proxy = [\"/a=http://127.0.0.1:1\", \"/b=http://127.0.0.1:2\"]\n\
             shutdown-timeout = \"20s\"\nsqpoll = true\n",
        )
        .unwrap();
        let args: Vec<String> = got.into_iter().flat_map(|e| e.args).collect();
        for want in [
            "--port 9000",
            "--no-files",
            "--proxy /a=http://127.0.0.1:1 --proxy /b=http://127.0.0.1:2",
            "--shutdown-timeout 20s",
            "--sqpoll",
        ] {
            assert!(args.join(" ").contains(want), "{want} in {args:?}");
        }
        assert!(!args.iter().any(|a| a == "--dir-listing"));
    }

    #[test]
    fn errors_name_the_line_and_key() {
        let cases = [
            ("port = 80\nnope = 1\n", "2: nope: unknown key"),
            ("\n\nport = \"x\"\n", "3: port: invalid value 'x'"),
            ("port = [1, 2]\n", "1: port: takes one value, not a list"),
            (
                "no-files = \"yes\"\n",
                "1: no-files: is a switch: true or false",
            ),
            ("config = \"x\"\n", "1: config: unknown key"),
            ("port = 80\nport = 81\n", "2: duplicate key"),
            ("[table]\nport = 1\n", "1: table: unknown key"),
        ];
        for (text, want) in cases {
            let err = entries(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
