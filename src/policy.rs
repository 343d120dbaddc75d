//! Policy: turns the rule report into an action for this request, from `config.yaml`'s
//! `policy` section (global mode and threshold, per-route overrides, allowlist, exclusions).
//! Pure and cheap; the allowlist always wins over blocking.

use std::net::IpAddr;

use serde::Serialize;

use crate::config::{Mode, PolicyConfig};
use crate::detectors::rules::{RuleMatch, RuleReport};

/// What happens to the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Not an attack (or inspection off): pass.
    Allow,
    /// An attack in `detect` mode, or allowlisted: pass and log.
    Log,
    /// An attack in `tag` mode: pass with `x-vigil-*` headers.
    Tag,
    /// An attack in `block` mode: answer with the block status; upstream never sees it.
    Block,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Log => "log",
            Action::Tag => "tag",
            Action::Block => "block",
        }
    }
}

/// The mode and threshold in force for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effective {
    pub mode: Mode,
    pub threshold: u32,
}

/// The policy's decision, with what it was based on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub action: Action,
    pub mode: Mode,
    pub threshold: u32,
    pub score: u32,
    pub attack: bool,
    pub allowlisted: bool,
    /// Matches that count (exclusions removed).
    pub matches: Vec<RuleMatch>,
    /// How many matches exclusions removed.
    pub excluded: usize,
}

#[derive(Debug, Clone)]
pub struct Policy {
    cfg: PolicyConfig,
}

impl Policy {
    pub fn new(cfg: PolicyConfig) -> Self {
        Policy { cfg }
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    pub fn block_status(&self) -> u16 {
        self.cfg.block_status
    }

    pub fn tag_response(&self) -> bool {
        self.cfg.tag_response
    }

    /// Mode and threshold for a host and path: the first matching route overrides the global
    /// values it sets.
    pub fn effective(&self, host: &str, path: &str) -> Effective {
        let mut e = Effective {
            mode: self.cfg.mode,
            threshold: self.cfg.threshold,
        };
        if let Some(r) = self
            .cfg
            .routes
            .iter()
            .find(|r| r.matcher.matches(host, path))
        {
            if let Some(m) = r.mode {
                e.mode = m;
            }
            if let Some(t) = r.threshold {
                e.threshold = t;
            }
        }
        e
    }

    pub fn allowlisted(&self, client: IpAddr, host: &str, path: &str) -> bool {
        self.cfg.allow_clients.iter().any(|n| n.contains(&client))
            || self.cfg.allow_routes.iter().any(|r| r.matches(host, path))
    }

    /// Decide on a request given its rule report.
    pub fn decide(&self, client: IpAddr, host: &str, path: &str, report: RuleReport) -> Decision {
        let eff = self.effective(host, path);
        let before = report.matches.len();
        let matches: Vec<RuleMatch> = report
            .matches
            .into_iter()
            .filter(|m| !self.excluded(m, host, path))
            .collect();
        let excluded = before - matches.len();
        let score: u32 = matches.iter().map(|m| m.score).sum();
        let attack = score >= eff.threshold;
        let allowlisted = self.allowlisted(client, host, path);
        let action = match (eff.mode, attack) {
            (Mode::Off, _) | (_, false) => Action::Allow,
            (Mode::Detect, true) => Action::Log,
            (Mode::Tag, true) => Action::Tag,
            (Mode::Block, true) if allowlisted => Action::Log,
            (Mode::Block, true) => Action::Block,
        };
        Decision {
            action,
            mode: eff.mode,
            threshold: eff.threshold,
            score,
            attack,
            allowlisted,
            matches,
            excluded,
        }
    }

    fn excluded(&self, m: &RuleMatch, host: &str, path: &str) -> bool {
        self.cfg.exclusions.iter().any(|e| {
            e.matcher.matches(host, path)
                && (e.rule_ids.iter().any(|id| id == &m.id)
                    || e.categories.iter().any(|c| c == &m.category))
                && e.parameter
                    .as_ref()
                    .is_none_or(|p| m.parameter.as_deref() == Some(p.as_str()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Exclusion, RouteMatch, RoutePolicy};

    fn m(id: &str, cat: &str, score: u32, param: Option<&str>) -> RuleMatch {
        RuleMatch {
            id: id.into(),
            category: cat.into(),
            score,
            severity: "critical",
            field: "query".into(),
            parameter: param.map(Into::into),
            snippet: String::new(),
        }
    }

    fn policy() -> Policy {
        Policy::new(PolicyConfig {
            mode: Mode::Block,
            threshold: 5,
            block_status: 403,
            tag_response: false,
            routes: vec![RoutePolicy {
                matcher: RouteMatch {
                    host: None,
                    path_prefix: Some("/api".into()),
                },
                mode: Some(Mode::Tag),
                threshold: Some(8),
            }],
            allow_clients: vec!["10.0.0.0/8".parse().unwrap()],
            allow_routes: vec![],
            exclusions: vec![Exclusion {
                matcher: RouteMatch {
                    host: None,
                    path_prefix: Some("/search".into()),
                },
                rule_ids: vec![],
                categories: vec!["sqli".into()],
                parameter: Some("q".into()),
            }],
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn thresholds_modes_and_routes() {
        let p = policy();
        let r = RuleReport {
            matches: vec![m("a", "xss", 5, None)],
        };
        assert_eq!(
            p.decide(ip("1.1.1.1"), "h", "/", r.clone()).action,
            Action::Block
        );
        let d = p.decide(ip("1.1.1.1"), "h", "/api/x", r.clone());
        assert_eq!((d.action, d.attack, d.threshold), (Action::Allow, false, 8));
        let r2 = RuleReport {
            matches: vec![m("a", "xss", 5, None), m("b", "xss", 3, None)],
        };
        assert_eq!(
            p.decide(ip("1.1.1.1"), "h", "/api/x", r2).action,
            Action::Tag
        );
        assert_eq!(p.decide(ip("10.1.2.3"), "h", "/", r).action, Action::Log);
    }

    #[test]
    fn exclusions_need_route_category_and_parameter() {
        let p = policy();
        let d = p.decide(
            ip("1.1.1.1"),
            "h",
            "/search",
            RuleReport {
                matches: vec![m("s", "sqli", 5, Some("q"))],
            },
        );
        assert_eq!((d.action, d.excluded), (Action::Allow, 1));
        let d = p.decide(
            ip("1.1.1.1"),
            "h",
            "/search",
            RuleReport {
                matches: vec![m("s", "sqli", 5, Some("id"))],
            },
        );
        assert_eq!(d.action, Action::Block);
        let d = p.decide(
            ip("1.1.1.1"),
            "h",
            "/other",
            RuleReport {
                matches: vec![m("s", "sqli", 5, Some("q"))],
            },
        );
        assert_eq!(d.action, Action::Block);
    }
}
