//! `abupdate update`: one unattended check of a channel (docs/channels.md). Fetches the
//! channel file, checks it (signature, sequence, expiry, compatible), decides whether this
//! machine takes the version now (installed version, versions that failed here, rollout
//! share), installs it through `apply` with the bundle pinned to the channel's manifest
//! digest, and reboots when the configured policy says so. The outcome goes to stdout (or
//! `--json`), the exit code and the update state file that `status` shows.

use std::io::{Read, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use abbundle::channel::{self, Channel, ChannelError, MAX_CHANNEL_LEN};
use abbundle::Version;
use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tracing::{info, warn};

use crate::cli::UpdateArgs;
use crate::cmd::{bootcheck, status};
use crate::codes::{self, Refusal};
use crate::install::apply;
use crate::state;
use crate::state::channel_state::{self, Check, UpdateState};
use crate::state::Context as Ctx;
use crate::{fetch, refuse};

/// How far in the future a channel file's `issued` may be: clocks of a device and of the
/// machine that published differ by seconds to minutes (NTP not synced yet); a file from
/// further ahead is refused (65), as a clock that far off makes the expiry meaningless too.
pub const MAX_CLOCK_SKEW: u64 = 300;

/// What a check found, short of a refusal.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    UpToDate,
    Installed,
    RebootPending,
    NotInRollout { bucket: u64 },
    FailedBefore,
    Available,
}

impl Outcome {
    fn name(&self) -> &'static str {
        match self {
            Outcome::UpToDate => "up-to-date",
            Outcome::Installed => "installed",
            Outcome::RebootPending => "reboot-pending",
            Outcome::NotInRollout { .. } => "not-in-rollout",
            Outcome::FailedBefore => "failed-before",
            Outcome::Available => "update-available",
        }
    }

    fn code(&self) -> i32 {
        match self {
            Outcome::UpToDate => 0,
            Outcome::Installed | Outcome::RebootPending => codes::UPDATE_INSTALLED,
            Outcome::NotInRollout { .. } => codes::NOT_IN_ROLLOUT,
            Outcome::FailedBefore => codes::VERSION_FAILED_BEFORE,
            Outcome::Available => codes::UPDATE_AVAILABLE,
        }
    }
}

/// `--json` output.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    api_version: &'static str,
    kind: &'static str,
    outcome: String,
    code: i32,
    message: String,
    channel: String,
    channel_version: Option<String>,
    sequence: Option<u64>,
    installed_version: Option<String>,
    rebooting: bool,
}

/// What a check learned before it ended (for the report, whatever the outcome).
#[derive(Default)]
struct Seen {
    doc: Option<Channel>,
    installed: Option<String>,
}

pub fn run(ctx: &Ctx, a: &UpdateArgs) -> Result<()> {
    let Some(channel) = a.channel.clone().or_else(|| ctx.config.channel.clone()) else {
        refuse!(
            codes::NO_CHANNEL,
            "no channel configured (set channel in {} or give --channel); nothing was changed",
            ctx.config_path.display()
        );
    };
    let shown = fetch::redact(&channel);
    let settings = ctx.config.update_settings().map_err(|e| {
        Refusal::new(
            codes::UPDATE_SETTINGS_INVALID,
            format!("{}: {e}; nothing was changed", ctx.config_path.display()),
        )
    })?;
    let (policy, jitter) = (settings.reboot, settings.jitter);
    if !a.now && jitter > 0 {
        // `jitter` is bounded when loaded (config::MAX_JITTER); checked all the same.
        let wait = random_u64()? % jitter.checked_add(1).context("update-jitter is too long")?;
        info!("waiting {wait} s before checking (update-jitter {jitter} s; --now skips it)");
        std::thread::sleep(Duration::from_secs(wait));
    }
    let state_path = channel_state::path(&ctx.config.state_file);
    let mut state = UpdateState::load(&state_path)?;
    let mut seen = Seen::default();
    let result = check(ctx, a, &channel, &mut state, &mut seen);

    let (outcome, code, message) = match &result {
        Ok(o) => (o.name().to_string(), o.code(), describe(o, &seen, &shown)),
        Err(e) => {
            let code = super::exit_code(e);
            let kind = if e.chain().any(|c| c.is::<Refusal>()) {
                "refused"
            } else {
                "error"
            };
            (kind.to_string(), code, format!("{e:#}"))
        }
    };
    let now = now();
    if !a.dry_run {
        // Bounded: the message can quote what a server sent (a redirect's Location), and the
        // file must stay within what `UpdateState::load` reads back.
        state.last_check = Some(Check {
            time: now,
            channel: channel_state::bounded(&shown, channel_state::MAX_STORED_URL),
            outcome: outcome.clone(),
            code,
            message: channel_state::bounded(&message, channel_state::MAX_STORED_MESSAGE),
            channel_version: seen.doc.as_ref().map(|d| d.version.to_string()),
        });
        if let Err(e) = state.save(&state_path) {
            warn!("could not record this check: {e:#}");
        }
    }
    let rebooting = !a.dry_run
        && matches!(result, Ok(Outcome::Installed) | Ok(Outcome::RebootPending))
        && policy.reboot_now(result.as_ref().ok() == Some(&Outcome::Installed), now);
    if a.json {
        let report = Report {
            api_version: state::API_VERSION,
            kind: "UpdateResult",
            outcome,
            code,
            message: message.clone(),
            channel: shown,
            channel_version: seen.doc.as_ref().map(|d| d.version.to_string()),
            sequence: seen.doc.as_ref().map(|d| d.sequence),
            installed_version: seen.installed.clone(),
            rebooting,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if result.is_ok() {
        println!("{message}");
    }
    let outcome = result?;
    if rebooting {
        info!(
            "rebooting into the new version (update-reboot = {})",
            ctx.config.update_reboot
        );
        let _ = std::io::stdout().flush();
        let st = std::process::Command::new("reboot")
            .status()
            .context("running reboot")?;
        if !st.success() {
            anyhow::bail!("reboot failed: {st}");
        }
    }
    if outcome.code() != 0 {
        // An outcome, not an error: the code says it, with nothing on stderr.
        let _ = std::io::stdout().flush();
        std::process::exit(outcome.code());
    }
    Ok(())
}

fn check(
    ctx: &Ctx,
    a: &UpdateArgs,
    channel: &str,
    state: &mut UpdateState,
    seen: &mut Seen,
) -> Result<Outcome> {
    let shown = fetch::redact(channel);
    let compatible = ctx.compatible()?;
    let keys = ctx.trusted_keys()?;
    // Fallbacks boot-check recorded since the last check: those versions are not retried.
    if let Some(rec) = bootcheck::read(&ctx.config.state_file) {
        if let (true, Some(v)) = (rec.fallback, rec.failed_version.as_deref()) {
            if state.add_failed(v) {
                warn!(
                    "version {v} did not come up on this machine: it will not be installed again"
                );
            }
        }
    }
    let bytes = fetch::fetch_document(channel, &ctx.config, MAX_CHANNEL_LEN)?;
    let (doc, signed_by) = channel::open(&bytes, &keys).map_err(|e| {
        let code = match e {
            ChannelError::TooLarge { .. } => codes::CHANNEL_TOO_LARGE,
            ChannelError::Malformed(_) => codes::CHANNEL_MALFORMED,
            ChannelError::Unsigned => codes::CHANNEL_UNSIGNED,
            ChannelError::Untrusted { .. } => codes::CHANNEL_UNTRUSTED,
            ChannelError::BadSignature(_) => codes::CHANNEL_BAD_SIGNATURE,
        };
        Refusal::new(code, format!("{shown}: {e}; nothing was changed"))
    })?;
    seen.doc = Some(doc.clone());
    info!(
        "channel {} offers version {} (sequence {}, rollout {}%), signed by {signed_by}",
        doc.channel, doc.version, doc.sequence, doc.rollout
    );
    // Keyed by the URL without its password: the state file must not hold a secret.
    if let Some(last) = state.sequence(&shown).filter(|&l| doc.sequence < l) {
        refuse!(
            codes::CHANNEL_REPLAYED,
            "{shown}: sequence {} is lower than {last}, which this device accepted before: \
             an old channel file (replayed or from a stale mirror); nothing was changed",
            doc.sequence
        );
    }
    let now = now();
    if doc.issued > now.saturating_add(MAX_CLOCK_SKEW) {
        refuse!(
            codes::CHANNEL_NOT_YET_VALID,
            "{shown}: the channel file was issued {} s in the future (issued {}, now {now}): \
             this device's clock or the publisher's is wrong; nothing was changed",
            doc.issued - now,
            doc.issued
        );
    }
    if now >= doc.expires {
        refuse!(
            codes::CHANNEL_EXPIRED,
            "{shown}: the channel file expired {} s ago (expires {}, now {now}): an old file \
             (frozen or replayed); nothing was changed",
            now - doc.expires,
            doc.expires
        );
    }
    if doc.compatible != compatible {
        refuse!(
            codes::CHANNEL_INCOMPATIBLE,
            "{shown}: the channel is for '{}', this system is '{compatible}'; nothing was changed",
            doc.compatible
        );
    }
    state.accept_sequence(&shown, doc.sequence);

    let st = status::collect(ctx)?;
    let slot = |s| st.slots.iter().find(|x| x.slot == s);
    let version_of = |s| {
        slot(s)
            .and_then(|x: &status::SlotStatus| x.version.as_deref())
            .and_then(|v| v.parse::<Version>().ok())
    };
    if let Some(next) = st.next_boot_slot.filter(|&n| Some(n) != st.running_slot) {
        let trying = slot(next).is_some_and(|x| x.state == "trying");
        if trying && version_of(next).is_some_and(|v| v >= doc.version) {
            seen.installed = version_of(next).map(|v| v.to_string());
            return Ok(Outcome::RebootPending);
        }
    }
    let current = st.running_slot.or(st.next_boot_slot).and_then(version_of);
    seen.installed = current.as_ref().map(|v| v.to_string());
    if current.as_ref().is_some_and(|v| *v >= doc.version) {
        return Ok(Outcome::UpToDate);
    }
    if state.has_failed(doc.version.as_str()) {
        return Ok(Outcome::FailedBefore);
    }
    let id = channel_state::machine_id(&channel_state::machine_id_path(&ctx.config.state_file))?;
    let bucket = rollout_bucket(&id, doc.version.as_str());
    if bucket >= u64::from(doc.rollout) {
        return Ok(Outcome::NotInRollout { bucket });
    }
    if a.dry_run {
        return Ok(Outcome::Available);
    }
    let bundle = bundle_location(channel, &doc.bundle)?;
    info!(
        "installing version {} from {}",
        doc.version,
        fetch::redact(&bundle)
    );
    with_stdout_on_stderr(a.json, || {
        apply::run(
            ctx,
            &apply::Request {
                source: &bundle,
                allow_downgrade: false,
                slot: None,
                reboot: false,
                expect_manifest_sha256: Some(doc.manifest_sha256),
                expect_version: Some(&doc.version),
                dry_run: false,
                full: false,
                json: false,
            },
        )
    })?;
    Ok(Outcome::Installed)
}

fn describe(o: &Outcome, seen: &Seen, channel: &str) -> String {
    let v = seen
        .doc
        .as_ref()
        .map(|d| d.version.to_string())
        .unwrap_or_default();
    let installed = seen.installed.as_deref().unwrap_or("unknown");
    match o {
        Outcome::UpToDate => format!("up to date: version {installed} (channel {channel} offers {v})"),
        Outcome::Installed => format!("installed version {v}; it runs after a reboot"),
        Outcome::RebootPending => format!("version {installed} is installed and waits for a reboot"),
        Outcome::NotInRollout { bucket } => format!(
            "version {v} is not rolled out to this machine yet (rollout {}%, this machine's place {bucket})",
            seen.doc.as_ref().map(|d| d.rollout).unwrap_or(0)
        ),
        Outcome::FailedBefore => format!(
            "version {v} failed on this machine before (it fell back): skipped until a newer version is published"
        ),
        Outcome::Available => format!("version {v} would be installed (installed: {installed}); --dry-run"),
    }
}

/// This machine's place, 0 to 99, in the rollout of `version`: stable for one machine and
/// version (so raising the share only adds machines), independent between versions (so the
/// same machines are not always first).
pub fn rollout_bucket(machine_id: &str, version: &str) -> u64 {
    let h = Sha256::digest(format!("abupdate-rollout\0{machine_id}\0{version}"));
    u64::from_be_bytes(h[..8].try_into().unwrap()) % 100
}

/// Where the bundle is: `bundle` (a checked relative path) next to the channel file. A
/// file:// URL becomes a plain path, which `apply` opens. An http(s) channel is joined as a
/// URL (RFC 3986) and the result must stay on the channel's scheme, host and port: with an
/// empty path (`http://host:port`) a text join would have let `otherhost:port/x.abu` name
/// another server.
pub fn bundle_location(channel: &str, bundle: &str) -> Result<String> {
    if channel.starts_with("http://") || channel.starts_with("https://") {
        return http_bundle_location(channel, bundle);
    }
    let base = channel.split(['?', '#']).next().unwrap_or(channel);
    let dir = match base.rfind('/') {
        Some(i) => &base[..=i],
        None => "",
    };
    let joined = format!("{dir}{bundle}");
    let path = fetch::local_path(&joined).map_err(|e| {
        Refusal::new(
            codes::SOURCE_UNAVAILABLE,
            format!("{}: {e}", fetch::redact(channel)),
        )
    })?;
    Ok(path.display().to_string())
}

#[cfg(feature = "http")]
fn http_bundle_location(channel: &str, bundle: &str) -> Result<String> {
    let outside = |why: String| -> anyhow::Error {
        Refusal::new(
            codes::CHANNEL_MALFORMED,
            format!(
                "{}: bundle '{}' {why}; nothing was changed",
                fetch::redact(channel),
                channel_state::bounded(bundle, channel_state::MAX_STORED_URL)
            ),
        )
        .into()
    };
    let base = url::Url::parse(channel).map_err(|e| outside(format!("cannot be placed: {e}")))?;
    let joined = base
        .join(bundle)
        .map_err(|e| outside(format!("cannot be joined to the channel's URL: {e}")))?;
    if joined.scheme() != base.scheme()
        || joined.host_str() != base.host_str()
        || joined.port_or_known_default() != base.port_or_known_default()
    {
        return Err(outside(
            "is not on the channel's server (scheme, host and port)".into(),
        ));
    }
    Ok(joined.to_string())
}

#[cfg(not(feature = "http"))]
fn http_bundle_location(channel: &str, _bundle: &str) -> Result<String> {
    refuse!(
        codes::SOURCE_UNAVAILABLE,
        "{}: this abupdate was built without http support; nothing was changed",
        fetch::redact(channel)
    )
}

/// Runs `f` with stdout pointing at stderr when `json`: stdout then carries only the JSON
/// report, and what apply prints on the way still reaches the log.
fn with_stdout_on_stderr<T>(json: bool, f: impl FnOnce() -> T) -> T {
    if !json {
        return f();
    }
    let _ = std::io::stdout().flush();
    // SAFETY: dup/dup2 on the process's own standard descriptors; restored below.
    let saved = unsafe { libc::dup(1) };
    if saved < 0 || unsafe { libc::dup2(2, 1) } < 0 {
        return f();
    }
    let out = f();
    let _ = std::io::stdout().flush();
    // SAFETY: as above; `saved` is the descriptor dup returned.
    unsafe {
        libc::dup2(saved, 1);
        libc::close(saved);
    }
    out
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random_u64() -> Result<u64> {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    Ok(u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_places_are_stable_and_spread() {
        assert_eq!(rollout_bucket("m1", "2"), rollout_bucket("m1", "2"));
        let ids: Vec<String> = (0..1000).map(|i| format!("{i:032x}")).collect();
        let in10 = ids.iter().filter(|m| rollout_bucket(m, "2") < 10).count();
        assert!((50..150).contains(&in10), "{in10} of 1000 in a 10% rollout");
        // Another version picks other machines.
        let both = ids
            .iter()
            .filter(|m| rollout_bucket(m, "2") < 10 && rollout_bucket(m, "3") < 10)
            .count();
        assert!(both < 40, "{both}");
    }

    #[test]
    fn bundle_next_to_the_channel_file() {
        assert_eq!(
            bundle_location("https://h/x/vps/stable.json?t=1", "v2.abu").unwrap(),
            "https://h/x/vps/v2.abu"
        );
        assert_eq!(
            bundle_location("file:///media/ssd/vps/stable.json", "v2.abu").unwrap(),
            "/media/ssd/vps/v2.abu"
        );
        assert_eq!(
            bundle_location("/media/ssd/vps/stable.json", "v2.abu").unwrap(),
            "/media/ssd/vps/v2.abu"
        );
        assert_eq!(bundle_location("stable.json", "v2.abu").unwrap(), "v2.abu");
    }

    #[cfg(feature = "http")]
    #[test]
    fn bundle_stays_on_the_channels_server() {
        assert_eq!(
            bundle_location("http://h:8080", "v2.abu").unwrap(),
            "http://h:8080/v2.abu"
        );
        assert_eq!(
            bundle_location("https://u:p@h/vps/stable.json#x", "a/v2.abu").unwrap(),
            "https://u:p@h/vps/a/v2.abu"
        );
        // Passes the channel's own path check (relative, no "://"), yet a text join after
        // "http://" made it a host.
        for (channel, bundle) in [
            ("http://127.0.0.1:8080", "otherhost:9/x.abu"),
            ("http://h:8080?q", "evil.example:80/x.abu"),
            ("https://h", "http:x.abu"),
        ] {
            let e = bundle_location(channel, bundle).unwrap_err();
            let r = e.downcast_ref::<Refusal>().expect("a refusal");
            assert_eq!(r.code, codes::CHANNEL_MALFORMED, "{channel} {bundle}: {e}");
        }
    }
}
