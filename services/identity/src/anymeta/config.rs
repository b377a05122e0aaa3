//! Where the anyMeta credentials come from: `TAGPOLL_ANYMETA_*` variables, or anyMeta's own
//! registry file (`~/.anymeta`, as written by python-anymeta's `any-registry`).
//!
//! Either the five `TAGPOLL_ANYMETA_{ENTRYPOINT,CONSUMER_KEY,CONSUMER_SECRET,TOKEN,TOKEN_SECRET}`
//! variables, or `TAGPOLL_ANYMETA_FILE` (+ `TAGPOLL_ANYMETA_SITE` to pick a section), never both:
//! mixing would leave it unclear which secret is in use. Empty variables count as unset, so a
//! compose file can disable anyMeta with `TAGPOLL_ANYMETA_ENTRYPOINT=`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;

use super::ini::{IniEntry, IniSection, parse_ini};

pub const ENV_ENTRYPOINT: &str = "TAGPOLL_ANYMETA_ENTRYPOINT";
pub const ENV_CONSUMER_KEY: &str = "TAGPOLL_ANYMETA_CONSUMER_KEY";
pub const ENV_CONSUMER_SECRET: &str = "TAGPOLL_ANYMETA_CONSUMER_SECRET";
pub const ENV_TOKEN: &str = "TAGPOLL_ANYMETA_TOKEN";
pub const ENV_TOKEN_SECRET: &str = "TAGPOLL_ANYMETA_TOKEN_SECRET";
pub const ENV_FILE: &str = "TAGPOLL_ANYMETA_FILE";
pub const ENV_SITE: &str = "TAGPOLL_ANYMETA_SITE";

/// Everything needed to talk to one anyMeta site. `Debug` hides the secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct AnyMetaConfig {
    /// The full RPC URL, `{site}/services/rest/`.
    pub entrypoint: String,
    pub consumer_key: String,
    /// May be empty: anyMeta's static consumer identity has no secret.
    pub consumer_secret: String,
    pub token: String,
    pub token_secret: String,
    /// Send the `oauth_*` parameters in an `Authorization` header instead of the form body.
    pub auth_in_header: bool,
    /// Per request, connecting included.
    pub timeout: Duration,
}

impl std::fmt::Debug for AnyMetaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnyMetaConfig")
            .field("entrypoint", &self.entrypoint)
            .field("consumer_key", &self.consumer_key)
            .field("consumer_secret", &"<redacted>")
            .field("token", &self.token)
            .field("token_secret", &"<redacted>")
            .field("auth_in_header", &self.auth_in_header)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{ENV_ENTRYPOINT} is set but {var} is missing")]
    MissingVar { var: &'static str },
    #[error("{var} is set but empty")]
    EmptyVar { var: &'static str },
    #[error("{var} cannot be combined with {ENV_FILE}; take all credentials from one place")]
    Conflict { var: &'static str },
    #[error("{ENV_SITE} is set but {ENV_FILE} is not")]
    SiteWithoutFile,
    #[error("{origin}: entry point {entrypoint:?} is not an http(s) URL")]
    BadEntrypoint { origin: String, entrypoint: String },
    #[error("cannot read anyMeta registry {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("anyMeta registry {}, line {line}: {detail}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error("anyMeta registry {}, line {line}: section [{site}] has no key {key:?}", path.display())]
    MissingKey {
        path: PathBuf,
        line: usize,
        site: String,
        key: &'static str,
    },
    #[error("anyMeta registry {}, line {line}: key {key:?} in section [{site}] is empty", path.display())]
    EmptyKey {
        path: PathBuf,
        line: usize,
        site: String,
        key: &'static str,
    },
    #[error("anyMeta registry {} has no site sections", path.display())]
    NoSites { path: PathBuf },
    #[error("anyMeta registry {} has several sites ({}); set {ENV_SITE}", path.display(), .available.join(", "))]
    SiteRequired {
        path: PathBuf,
        available: Vec<String>,
    },
    #[error("anyMeta registry {} has no section [{site}] (sites: {})", path.display(), .available.join(", "))]
    UnknownSite {
        path: PathBuf,
        site: String,
        available: Vec<String>,
    },
}

impl AnyMetaConfig {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    /// Body-borne OAuth parameters (as python-anymeta sends them) and the default timeout.
    pub fn new(
        entrypoint: impl Into<String>,
        consumer_key: impl Into<String>,
        consumer_secret: impl Into<String>,
        token: impl Into<String>,
        token_secret: impl Into<String>,
    ) -> Self {
        AnyMetaConfig {
            entrypoint: entrypoint.into(),
            consumer_key: consumer_key.into(),
            consumer_secret: consumer_secret.into(),
            token: token.into(),
            token_secret: token_secret.into(),
            auth_in_header: false,
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }

    /// Reads the process environment; `Ok(None)` when anyMeta is not configured at all.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`AnyMetaConfig::from_env`] over any variable lookup (tests pass a map).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        let get = |var: &str| {
            lookup(var)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if let Some(file) = get(ENV_FILE) {
            for var in [
                ENV_ENTRYPOINT,
                ENV_CONSUMER_KEY,
                ENV_CONSUMER_SECRET,
                ENV_TOKEN,
                ENV_TOKEN_SECRET,
            ] {
                if get(var).is_some() {
                    return Err(ConfigError::Conflict { var });
                }
            }
            let path = expand_home(&file, get("HOME"));
            let site = get(ENV_SITE);
            return Self::from_registry_file(&path, site.as_deref()).map(Some);
        }
        if get(ENV_SITE).is_some() {
            return Err(ConfigError::SiteWithoutFile);
        }
        let Some(entrypoint) = get(ENV_ENTRYPOINT) else {
            return Ok(None);
        };
        check_entrypoint(&entrypoint, ENV_ENTRYPOINT)?;
        // Present-but-empty counts as missing for everything except the consumer secret, which
        // is legitimately empty for static consumer identities.
        let required = |var: &'static str| get(var).ok_or(ConfigError::MissingVar { var });
        let consumer_key = required(ENV_CONSUMER_KEY)?;
        let consumer_secret = match lookup(ENV_CONSUMER_SECRET) {
            Some(v) => v.trim().to_string(),
            None => {
                return Err(ConfigError::MissingVar {
                    var: ENV_CONSUMER_SECRET,
                });
            }
        };
        let token = required(ENV_TOKEN)?;
        let token_secret = required(ENV_TOKEN_SECRET)?;
        Ok(Some(AnyMetaConfig::new(
            entrypoint,
            consumer_key,
            consumer_secret,
            token,
            token_secret,
        )))
    }

    /// Reads one site from an anyMeta registry file. `site` may be omitted when the file holds
    /// exactly one section.
    pub fn from_registry_file(path: &Path, site: Option<&str>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_registry_str(&text, path, site)
    }

    /// [`AnyMetaConfig::from_registry_file`] on text already read; `path` is only used in errors.
    pub fn from_registry_str(
        text: &str,
        path: &Path,
        site: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let sections = parse_ini(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            line: e.line,
            detail: e.detail,
        })?;
        // ConfigParser's [DEFAULT] supplies fallbacks for every section; it is not a site.
        let defaults = sections.iter().find(|s| s.name == "DEFAULT");
        let sites: Vec<&IniSection> = sections.iter().filter(|s| s.name != "DEFAULT").collect();
        let available = || sites.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        let section =
            match site {
                Some(name) => sites.iter().find(|s| s.name == name).ok_or_else(|| {
                    ConfigError::UnknownSite {
                        path: path.to_path_buf(),
                        site: name.to_string(),
                        available: available(),
                    }
                })?,
                None => match sites.as_slice() {
                    [] => {
                        return Err(ConfigError::NoSites {
                            path: path.to_path_buf(),
                        });
                    }
                    [only] => only,
                    _ => {
                        return Err(ConfigError::SiteRequired {
                            path: path.to_path_buf(),
                            available: available(),
                        });
                    }
                },
            };
        let entry = |key: &'static str, may_be_empty: bool| -> Result<&IniEntry, ConfigError> {
            let entry = section
                .get(key)
                .or_else(|| defaults.and_then(|d| d.get(key)))
                .ok_or_else(|| ConfigError::MissingKey {
                    path: path.to_path_buf(),
                    line: section.line,
                    site: section.name.clone(),
                    key,
                })?;
            if entry.value.is_empty() && !may_be_empty {
                return Err(ConfigError::EmptyKey {
                    path: path.to_path_buf(),
                    line: entry.line,
                    site: section.name.clone(),
                    key,
                });
            }
            Ok(entry)
        };
        let entrypoint = entry("entrypoint", false)?;
        check_entrypoint(
            &entrypoint.value,
            &format!(
                "anyMeta registry {}, line {}",
                path.display(),
                entrypoint.line
            ),
        )?;
        Ok(AnyMetaConfig::new(
            entrypoint.value.clone(),
            entry("c_key", false)?.value.clone(),
            entry("c_sec", true)?.value.clone(),
            entry("t_key", false)?.value.clone(),
            entry("t_sec", false)?.value.clone(),
        ))
    }
}

fn check_entrypoint(entrypoint: &str, origin: &str) -> Result<(), ConfigError> {
    let ok = Url::parse(entrypoint)
        .ok()
        .is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
    if ok {
        Ok(())
    } else {
        Err(ConfigError::BadEntrypoint {
            origin: origin.to_string(),
            entrypoint: entrypoint.to_string(),
        })
    }
}

fn expand_home(path: &str, home: Option<String>) -> PathBuf {
    match (path.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => PathBuf::from(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const FULL: [(&str, &str); 5] = [
        (ENV_ENTRYPOINT, "https://www.mediamatic.net/services/rest/"),
        (ENV_CONSUMER_KEY, "ck"),
        (ENV_CONSUMER_SECRET, "cs"),
        (ENV_TOKEN, "tk"),
        (ENV_TOKEN_SECRET, "ts"),
    ];

    fn without(var: &str) -> Vec<(&'static str, &'static str)> {
        FULL.iter().copied().filter(|(k, _)| *k != var).collect()
    }

    #[test]
    fn unconfigured_is_none() {
        assert!(AnyMetaConfig::from_lookup(lookup(&[])).unwrap().is_none());
        assert!(
            AnyMetaConfig::from_lookup(lookup(&[(ENV_ENTRYPOINT, " ")]))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn full_env_is_read() {
        let c = AnyMetaConfig::from_lookup(lookup(&FULL)).unwrap().unwrap();
        assert_eq!(
            c,
            AnyMetaConfig::new(
                "https://www.mediamatic.net/services/rest/",
                "ck",
                "cs",
                "tk",
                "ts"
            )
        );
        assert!(!c.auth_in_header);
        assert_eq!(c.timeout, Duration::from_secs(5));
    }

    #[test]
    fn missing_variable_is_named() {
        for var in [
            ENV_CONSUMER_KEY,
            ENV_CONSUMER_SECRET,
            ENV_TOKEN,
            ENV_TOKEN_SECRET,
        ] {
            let e = AnyMetaConfig::from_lookup(lookup(&without(var))).unwrap_err();
            assert!(e.to_string().contains(var), "{e}");
        }
        let mut empty_secret = without(ENV_TOKEN_SECRET);
        empty_secret.push((ENV_TOKEN_SECRET, ""));
        let e = AnyMetaConfig::from_lookup(lookup(&empty_secret)).unwrap_err();
        assert!(e.to_string().contains(ENV_TOKEN_SECRET), "{e}");
    }

    #[test]
    fn empty_consumer_secret_is_allowed() {
        let mut vars = without(ENV_CONSUMER_SECRET);
        vars.push((ENV_CONSUMER_SECRET, ""));
        let c = AnyMetaConfig::from_lookup(lookup(&vars)).unwrap().unwrap();
        assert_eq!(c.consumer_secret, "");
    }

    #[test]
    fn bad_entrypoint_is_refused() {
        let mut vars = without(ENV_ENTRYPOINT);
        vars.push((ENV_ENTRYPOINT, "www.mediamatic.net/services/rest/"));
        let e = AnyMetaConfig::from_lookup(lookup(&vars)).unwrap_err();
        assert!(e.to_string().contains(ENV_ENTRYPOINT), "{e}");
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = AnyMetaConfig::new(
            "http://h/services/rest/",
            "ck",
            "c-secret",
            "tk",
            "t-secret",
        );
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("c-secret") && !shown.contains("t-secret"),
            "{shown}"
        );
    }

    const REGISTRY: &str = "[mediamatic]\n\
        entrypoint = http://www.mediamatic.net/services/rest/\n\
        comment = Mediamatic Lab\n\
        c_key = ck1\n\
        c_sec = cs1\n\
        t_key = tk1\n\
        t_sec = ts1\n\
        \n\
        [local]\n\
        entrypoint = http://localhost:8080/services/rest/\n\
        c_key = ck2\n\
        c_sec =\n\
        t_key = tk2\n\
        t_sec = ts2\n";

    #[test]
    fn registry_sections_are_selected() {
        let p = Path::new("/home/u/.anymeta");
        let c = AnyMetaConfig::from_registry_str(REGISTRY, p, Some("local")).unwrap();
        assert_eq!(
            c,
            AnyMetaConfig::new(
                "http://localhost:8080/services/rest/",
                "ck2",
                "",
                "tk2",
                "ts2"
            )
        );
        let e = AnyMetaConfig::from_registry_str(REGISTRY, p, None).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(ENV_SITE) && msg.contains("mediamatic, local"),
            "{msg}"
        );
        let e = AnyMetaConfig::from_registry_str(REGISTRY, p, Some("nope")).unwrap_err();
        assert!(e.to_string().contains("[nope]"), "{e}");
        let one = REGISTRY.split("\n\n").next().unwrap();
        let c = AnyMetaConfig::from_registry_str(one, p, None).unwrap();
        assert_eq!(c.token, "tk1");
    }

    #[test]
    fn registry_errors_name_file_line_and_key() {
        let p = Path::new("/etc/anymeta.conf");
        let missing =
            "# x\n[s]\nentrypoint = http://h/services/rest/\nc_key = a\nc_sec = b\nt_key = c\n";
        let e = AnyMetaConfig::from_registry_str(missing, p, None).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("/etc/anymeta.conf") && msg.contains("line 2") && msg.contains("t_sec"),
            "{msg}"
        );
        let empty =
            "[s]\nentrypoint = http://h/services/rest/\nc_key =\nc_sec = b\nt_key = c\nt_sec = d\n";
        let msg = AnyMetaConfig::from_registry_str(empty, p, None)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("line 3") && msg.contains("c_key"), "{msg}");
        let syntax = "[s]\nentrypoint\n";
        let msg = AnyMetaConfig::from_registry_str(syntax, p, None)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("/etc/anymeta.conf") && msg.contains("line 2"),
            "{msg}"
        );
        let bad_url =
            "[s]\nentrypoint = h/services/rest/\nc_key = a\nc_sec = b\nt_key = c\nt_sec = d\n";
        let msg = AnyMetaConfig::from_registry_str(bad_url, p, None)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("line 2") && msg.contains("entry point"),
            "{msg}"
        );
        let msg = AnyMetaConfig::from_registry_str("# empty\n", p, None)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("no site"), "{msg}");
    }

    #[test]
    fn registry_defaults_section_applies() {
        let text = "[DEFAULT]\nc_key = shared\nc_sec = s\n[a]\nentrypoint = http://h/services/rest/\nt_key = t\nt_sec = u\n";
        let c = AnyMetaConfig::from_registry_str(text, Path::new("f"), None).unwrap();
        assert_eq!(c.consumer_key, "shared");
    }

    #[test]
    fn env_file_is_read_and_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("anymeta.ini");
        std::fs::write(&path, REGISTRY).unwrap();
        let file = path.to_str().unwrap();
        let c = AnyMetaConfig::from_lookup(lookup(&[(ENV_FILE, file), (ENV_SITE, "mediamatic")]))
            .unwrap()
            .unwrap();
        assert_eq!(c.consumer_key, "ck1");

        let e = AnyMetaConfig::from_lookup(lookup(&[
            (ENV_FILE, file),
            (ENV_SITE, "mediamatic"),
            (ENV_TOKEN, "x"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains(ENV_TOKEN), "{e}");

        let e = AnyMetaConfig::from_lookup(lookup(&[(ENV_SITE, "mediamatic")])).unwrap_err();
        assert!(matches!(e, ConfigError::SiteWithoutFile));

        let missing = dir.path().join("nope");
        let e = AnyMetaConfig::from_lookup(lookup(&[(ENV_FILE, missing.to_str().unwrap())]))
            .unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");

        std::fs::write(dir.path().join(".anymeta"), REGISTRY).unwrap();
        let home = dir.path().to_str().unwrap();
        let c = AnyMetaConfig::from_lookup(lookup(&[
            (ENV_FILE, "~/.anymeta"),
            (ENV_SITE, "local"),
            ("HOME", home),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(c.token, "tk2");
    }
}
