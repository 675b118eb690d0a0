//! `midge passwd`: manage a password file, with `mosquitto_passwd`'s flags.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use midge_broker::auth::{HashKind, hash_password, is_hash};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  midge passwd -c passwords alice          create the file, prompt for alice's password\n  midge passwd -b passwords bob s3cret     add or update bob without a prompt\n  midge passwd -H scram-sha-256 passwords carol   also usable with MQTT 5 SCRAM-SHA-256\n  midge passwd -D passwords bob            delete bob\n  midge passwd -U passwords                hash a file of username:password lines"
)]
pub(crate) struct PasswdArgs {
    /// Create a new password file, overwriting an existing one.
    #[arg(short = 'c', conflicts_with_all = ["delete", "update"])]
    create: bool,
    /// Batch mode: take the password from the command line instead of prompting.
    #[arg(short = 'b', conflicts_with_all = ["delete", "update"])]
    batch: bool,
    /// Delete the user instead of setting a password.
    #[arg(short = 'D', conflicts_with = "update")]
    delete: bool,
    /// Hash every plain-text `username:password` line of the file in place.
    #[arg(short = 'U')]
    update: bool,
    /// Hash to write: argon2id (default; Mosquitto 2.1 reads it), scram-sha-256
    /// (also lets MQTT 5 clients use the SCRAM-SHA-256 method), sha512-pbkdf2
    /// (readable by Mosquitto 2.0).
    #[arg(short = 'H', value_enum, default_value_t = HashArg::Argon2id)]
    hash: HashArg,
    /// Iterations for scram-sha-256 (default 4096) and sha512-pbkdf2 (default 210000).
    #[arg(short = 'I', value_parser = clap::value_parser!(u32).range(1..))]
    iterations: Option<u32>,
    /// The password file.
    file: PathBuf,
    /// The user name (not with -U).
    #[arg(required_unless_present = "update")]
    username: Option<String>,
    /// The password (with -b only).
    password: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum HashArg {
    Argon2id,
    #[value(name = "scram-sha-256")]
    ScramSha256,
    Sha512Pbkdf2,
}

impl From<HashArg> for HashKind {
    fn from(arg: HashArg) -> Self {
        match arg {
            HashArg::Argon2id => HashKind::Argon2id,
            HashArg::ScramSha256 => HashKind::ScramSha256,
            HashArg::Sha512Pbkdf2 => HashKind::Pbkdf2Sha512,
        }
    }
}

pub(crate) fn run(args: PasswdArgs) -> anyhow::Result<()> {
    let kind = HashKind::from(args.hash);
    let hash = |password: &str| hash_password(password.as_bytes(), kind, args.iterations).map_err(anyhow::Error::msg);
    if args.update {
        let lines = read_lines(&args.file)?;
        let mut out = Vec::with_capacity(lines.len());
        for line in lines {
            match line.split_once(':') {
                Some((user, secret)) if !line.starts_with('#') && !is_hash(secret) => {
                    out.push(format!("{user}:{}", hash(secret)?));
                }
                _ => out.push(line),
            }
        }
        return write_file(&args.file, &out);
    }
    let username = args.username.as_deref().unwrap_or_default();
    check_username(username)?;
    if args.password.is_some() && !args.batch {
        bail!("a password on the command line needs -b");
    }
    let mut lines = if args.create { Vec::new() } else { read_lines(&args.file)? };
    let position = lines.iter().position(|l| l.split_once(':').is_some_and(|(u, _)| u == username));
    if args.delete {
        let Some(i) = position else { bail!("user {username} not found in {}", args.file.display()) };
        lines.remove(i);
        return write_file(&args.file, &lines);
    }
    let password = match (args.batch, args.password) {
        (true, Some(p)) => p,
        (true, None) => bail!("-b needs a password after the user name"),
        (false, _) => prompt_password()?,
    };
    let line = format!("{username}:{}", hash(&password)?);
    match position {
        Some(i) => lines[i] = line,
        None => lines.push(line),
    }
    write_file(&args.file, &lines)
}

/// Mosquitto's rule: the name is the text before the first ':' of a line.
fn check_username(username: &str) -> anyhow::Result<()> {
    if username.is_empty() || username.contains(':') || username.chars().any(char::is_control) {
        bail!("invalid user name {username:?}: it must be non-empty, without ':' or control characters");
    }
    Ok(())
}

fn read_lines(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.lines().map(|l| l.trim_end_matches('\r').to_owned()).collect())
}

/// Replaces the file atomically; it is readable by its owner only.
fn write_file(path: &Path, lines: &[String]) -> anyhow::Result<()> {
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    crate::files::write_atomically(path, text.as_bytes(), 0o600)
}

/// Asks twice without echo on a terminal; reads two lines from a pipe.
fn prompt_password() -> anyhow::Result<String> {
    let (first, second) = if std::io::stdin().is_terminal() {
        (rpassword::prompt_password("Password: ")?, rpassword::prompt_password("Reenter password: ")?)
    } else {
        let mut lines = std::io::stdin().lock().lines();
        let mut next = || lines.next().transpose().map(Option::unwrap_or_default);
        (next()?, next()?)
    };
    if first != second {
        bail!("passwords do not match");
    }
    if first.is_empty() {
        bail!("empty password");
    }
    Ok(first)
}
