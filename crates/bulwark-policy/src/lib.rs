//! Data-residency policy: which targets a request of a given data class may reach.
//!
//! Everything here is a pure function of (request attributes, config): no IO, no clock,
//! no randomness. The server asks [`decide`] for the ordered list of allowed candidates
//! and may only send a request to a target this list contains; the [`Decision`] explains
//! itself for the `x-bulwark-route` header, the 403 body and the logs.
//!
//! Deny by default: a target with no declared trust level (or, for anything but the host,
//! no declared jurisdiction) receives only `public` data, whatever the policy says.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How sensitive a request is. Ordered: `Public < Internal < Confidential < Secret`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataClass {
    Public,
    Internal,
    Confidential,
    Secret,
}

impl DataClass {
    pub const ALL: [DataClass; 4] = [
        DataClass::Public,
        DataClass::Internal,
        DataClass::Confidential,
        DataClass::Secret,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DataClass::Public => "public",
            DataClass::Internal => "internal",
            DataClass::Confidential => "confidential",
            DataClass::Secret => "secret",
        }
    }
}

impl fmt::Display for DataClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown data class `{0}`; expected one of public, internal, confidential, secret")]
pub struct UnknownClass(pub String);

impl FromStr for DataClass {
    type Err = UnknownClass;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "public" => Ok(DataClass::Public),
            "internal" => Ok(DataClass::Internal),
            "confidential" => Ok(DataClass::Confidential),
            "secret" => Ok(DataClass::Secret),
            _ => Err(UnknownClass(s.to_owned())),
        }
    }
}

/// Who operates a target, as far as the data is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trust {
    /// The in-process engine: the data never leaves this machine.
    Host,
    /// The organisation's own servers.
    Private,
    /// Anything else (hosted APIs, third parties).
    Foreign,
}

impl Trust {
    pub fn as_str(self) -> &'static str {
        match self {
            Trust::Host => "host",
            Trust::Private => "private",
            Trust::Foreign => "foreign",
        }
    }
}

/// Where a target runs, as its config declares it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Residency {
    /// ISO 3166-1 alpha-2 country (`FR`) or a region (`EU`, `EEA`), upper case.
    pub jurisdiction: Option<String>,
    pub operator: Option<String>,
    pub trust: Option<Trust>,
}

impl Residency {
    /// The in-process engine on this machine, in the host's declared jurisdiction.
    pub fn host(jurisdiction: Option<String>) -> Self {
        Residency {
            jurisdiction,
            operator: None,
            trust: Some(Trust::Host),
        }
    }

    /// A target counts as declared when its trust is known and, unless it is the host,
    /// its jurisdiction too.
    pub fn declared(&self) -> bool {
        match self.trust {
            None => false,
            Some(Trust::Host) => true,
            Some(_) => self.jurisdiction.is_some(),
        }
    }
}

/// Countries in a region name used in rules.
const EU: &[&str] = &[
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV",
    "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
];
const EEA_EXTRA: &[&str] = &["IS", "LI", "NO"];

/// Whether a target in `place` is inside what a rule names as `allowed`.
/// A country is inside itself and inside the regions that contain it; a target that only
/// declares a region (`EU`) is inside that region but not inside any one country.
pub fn within(place: &str, allowed: &str) -> bool {
    let (place, allowed) = (place.to_ascii_uppercase(), allowed.to_ascii_uppercase());
    if place == allowed {
        return true;
    }
    match allowed.as_str() {
        "EU" => EU.contains(&place.as_str()),
        "EEA" => {
            place == "EU" || EU.contains(&place.as_str()) || EEA_EXTRA.contains(&place.as_str())
        }
        _ => false,
    }
}

/// What one data class may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Allowed trust levels.
    pub trust: BTreeSet<Trust>,
    /// Allowed jurisdictions (countries or regions); `None` means anywhere.
    pub jurisdictions: Option<BTreeSet<String>>,
}

impl Rule {
    pub fn trust(levels: &[Trust]) -> Self {
        Rule {
            trust: levels.iter().copied().collect(),
            jurisdictions: None,
        }
    }

    #[must_use]
    pub fn within(mut self, places: &[&str]) -> Self {
        self.jurisdictions = Some(places.iter().map(|p| p.to_ascii_uppercase()).collect());
        self
    }
}

/// One rule per data class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    rules: BTreeMap<DataClass, Rule>,
}

impl Default for Policy {
    /// Public data may go anywhere; internal and confidential data stay on the host or the
    /// organisation's own servers; secret data never leaves the host.
    fn default() -> Self {
        let mut rules = BTreeMap::new();
        rules.insert(
            DataClass::Public,
            Rule::trust(&[Trust::Host, Trust::Private, Trust::Foreign]),
        );
        rules.insert(
            DataClass::Internal,
            Rule::trust(&[Trust::Host, Trust::Private]),
        );
        rules.insert(
            DataClass::Confidential,
            Rule::trust(&[Trust::Host, Trust::Private]),
        );
        rules.insert(DataClass::Secret, Rule::trust(&[Trust::Host]));
        Policy { rules }
    }
}

impl Policy {
    /// The default policy with some classes' rules replaced.
    pub fn with_rules(overrides: impl IntoIterator<Item = (DataClass, Rule)>) -> Self {
        let mut p = Policy::default();
        p.rules.extend(overrides);
        p
    }

    pub fn rule(&self, class: DataClass) -> Option<&Rule> {
        self.rules.get(&class)
    }

    /// Whether data of `class` may reach a target with this residency.
    pub fn check(&self, class: DataClass, target: &Residency) -> Verdict {
        if class > DataClass::Public && !target.declared() {
            return Verdict::Denied(Denial::Undeclared { class });
        }
        let Some(rule) = self.rules.get(&class) else {
            return Verdict::Denied(Denial::NoRule { class });
        };
        // An undeclared target only ever reaches this point with public data.
        if let Some(trust) = target.trust {
            if !rule.trust.contains(&trust) {
                return Verdict::Denied(Denial::Trust { class, trust });
            }
        } else if !rule.trust.contains(&Trust::Foreign) {
            // Undeclared is treated as the least trusted kind.
            return Verdict::Denied(Denial::Undeclared { class });
        }
        if let Some(allowed) = &rule.jurisdictions {
            match &target.jurisdiction {
                Some(place) if allowed.iter().any(|a| within(place, a)) => {}
                Some(place) => {
                    return Verdict::Denied(Denial::Jurisdiction {
                        class,
                        jurisdiction: Some(place.clone()),
                    })
                }
                None => {
                    return Verdict::Denied(Denial::Jurisdiction {
                        class,
                        jurisdiction: None,
                    })
                }
            }
        }
        Verdict::Allowed
    }
}

/// Why a target was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The target declares no trust level or jurisdiction, so it gets public data only.
    Undeclared { class: DataClass },
    /// The class's rule does not allow this trust level.
    Trust { class: DataClass, trust: Trust },
    /// The class's rule does not allow this jurisdiction (or the target declares none).
    Jurisdiction {
        class: DataClass,
        jurisdiction: Option<String>,
    },
    /// The policy has no rule for this class.
    NoRule { class: DataClass },
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::Undeclared { class } => {
                write!(
                    f,
                    "no declared trust/jurisdiction, so public data only, not {class}"
                )
            }
            Denial::Trust { class, trust } => {
                write!(f, "{class} data may not reach {} targets", trust.as_str())
            }
            Denial::Jurisdiction {
                class,
                jurisdiction: Some(j),
            } => write!(f, "{class} data may not leave for {j}"),
            Denial::Jurisdiction {
                class,
                jurisdiction: None,
            } => {
                write!(f, "{class} data is restricted to listed jurisdictions and this target declares none")
            }
            Denial::NoRule { class } => write!(f, "no rule allows {class} data"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Denied(Denial),
}

/// A target a request could go to: a local model or an upstream model.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub name: &'a str,
    pub residency: &'a Residency,
}

/// The outcome for one request: every candidate considered, in order, with its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub class: DataClass,
    pub considered: Vec<(String, Verdict)>,
}

impl Decision {
    /// The candidates the request may go to, in preference order.
    pub fn allowed(&self) -> impl Iterator<Item = &str> {
        self.considered
            .iter()
            .filter(|(_, v)| *v == Verdict::Allowed)
            .map(|(n, _)| n.as_str())
    }

    pub fn is_denied(&self) -> bool {
        self.allowed().next().is_none()
    }

    /// One line for humans and logs: `class=confidential; a=allowed; b=denied (reason)`.
    pub fn explain(&self) -> String {
        let mut s = format!("class={}", self.class);
        for (name, verdict) in &self.considered {
            match verdict {
                Verdict::Allowed => s.push_str(&format!("; {name}=allowed")),
                Verdict::Denied(d) => s.push_str(&format!("; {name}=denied ({d})")),
            }
        }
        s
    }
}

/// Decides which candidates a request of `class` may reach. Pure.
pub fn decide(class: DataClass, candidates: &[Candidate<'_>], policy: &Policy) -> Decision {
    Decision {
        class,
        considered: candidates
            .iter()
            .map(|c| (c.name.to_owned(), policy.check(class, c.residency)))
            .collect(),
    }
}

#[cfg(test)]
mod tests;
