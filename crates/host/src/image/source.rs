//! Where guest packages come from: a Debian suite and a mirror.
//!
//! The mirror is the configuration's `debian_mirror` when it is set, else
//! the one this machine's own apt sources use for Debian, so that a machine
//! behind a local mirror or proxy needs nothing more. Runner Codes carries
//! no mirror host name of its own.

use std::process::Command;

use serde::{Deserialize, Serialize};

use super::ImageError;

/// The suite guest images are built from.
pub const SUITE: &str = "trixie";

/// Debian's release names, for telling Debian entries of apt's sources from
/// others (a vendor's repository, a PPA).
const DEBIAN_RELEASES: &[&str] = &[
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "sid",
    "oldstable",
    "stable",
    "testing",
    "unstable",
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DebianSource {
    pub suite: String,
    /// The configured mirror; `None` to take the machine's.
    pub mirror: Option<String>,
}

impl DebianSource {
    /// `mirror` as configured; empty for the machine's.
    pub fn new(mirror: &str) -> Self {
        Self {
            suite: SUITE.into(),
            mirror: Some(mirror.trim().to_string()).filter(|m| !m.is_empty()),
        }
    }

    /// The mirror to build from, looked up in apt's sources if none is
    /// configured.
    pub fn mirror(&self) -> Result<String, ImageError> {
        if let Some(mirror) = &self.mirror {
            return Ok(mirror.clone());
        }
        let output = Command::new("apt-get")
            .args([
                "indextargets",
                "--no-release-info",
                "--format",
                "$(REPO_URI) $(RELEASE)",
            ])
            .output();
        let listed = match output {
            Ok(output) if output.status.success() => {
                String::from_utf8_lossy(&output.stdout).into_owned()
            }
            _ => String::new(),
        };
        let codename = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|text| os_release_field(&text, "VERSION_CODENAME"));
        debian_mirror(&listed, codename.as_deref()).ok_or(ImageError::NoMirror)
    }
}

/// The mirror of the Debian entries in `apt-get indextargets` output
/// (`URI RELEASE` lines): the entry of this machine's own release if there
/// is one, else any Debian release's; never a security archive's.
fn debian_mirror(listed: &str, codename: Option<&str>) -> Option<String> {
    let entries: Vec<(&str, &str)> = listed
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(uri, release)| (uri.trim(), release.trim()))
        .filter(|(uri, release)| !uri.is_empty() && !release.ends_with("-security"))
        .collect();
    let base = |release: &str| release.split('-').next().unwrap_or(release).to_string();
    entries
        .iter()
        .find(|(_, release)| Some(*release) == codename)
        .or_else(|| {
            entries
                .iter()
                .find(|(_, release)| DEBIAN_RELEASES.contains(&base(release).as_str()))
        })
        .map(|(uri, _)| uri.trim_end_matches('/').to_string())
}

fn os_release_field(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
        .map(|value| value.trim().trim_matches('"').to_string())
        .filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mirror_is_the_one_apt_uses_for_debian() {
        let listed = "http://security.example/debian-security/ bookworm-security\n\
                      http://vendor.example/apt/ nodistro\n\
                      http://mirror.example/debian/ bookworm-updates\n\
                      http://mirror.example/debian/ bookworm\n";
        assert_eq!(
            debian_mirror(listed, Some("bookworm")).as_deref(),
            Some("http://mirror.example/debian")
        );
        // Another release's host (e.g. a container of another codename):
        // still a Debian entry, never the vendor's or the security archive.
        assert_eq!(
            debian_mirror(listed, Some("jammy")).as_deref(),
            Some("http://mirror.example/debian")
        );
        let only_others = "http://vendor.example/apt/ nodistro\n\
                           http://security.example/debian-security/ trixie-security\n";
        assert_eq!(debian_mirror(only_others, Some("trixie")), None);
        assert_eq!(debian_mirror("", None), None);
    }

    #[test]
    fn a_configured_mirror_wins() {
        let source = DebianSource::new(" http://proxy.local:3142/debian ");
        assert_eq!(source.mirror().unwrap(), "http://proxy.local:3142/debian");
        assert_eq!(DebianSource::new("").mirror, None);
    }

    #[test]
    fn os_release_fields_lose_their_quotes() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\n";
        assert_eq!(
            os_release_field(text, "VERSION_CODENAME").as_deref(),
            Some("bookworm")
        );
        assert_eq!(os_release_field(text, "ID"), None);
    }
}
