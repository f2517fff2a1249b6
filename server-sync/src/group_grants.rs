//! Which scopes the members of an identity provider's groups may read or write, kept in the
//! server's database (`fieldsync-server group-grants set FILE`, or the admin API) and written as
//! one mapping a line:
//!
//! ```text
//! # therapists of the east team write its caseload; supervisors read every caseload
//! group "east-therapists" -> write caseload-east
//! group "supervisors" -> read caseload-*
//! ```
//!
//! A scope ending in `*` names every scope that starts with what comes before it. A person's
//! access is worked out again from the groups of every token they present, so removing them
//! from a group at the provider removes the access at their next sync.

use crate::admin::check_name;
use crate::error::ServerError;
use crate::storage::{Access, StoredGroupGrant};

/// The scopes a mapping names: one, or every scope with a prefix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ScopePattern {
    /// Exactly this scope.
    Exact(String),
    /// Every scope that starts with this.
    Prefix(String),
}

impl ScopePattern {
    /// Reads `caseload-east` or `caseload-*`; says what is wrong with anything else.
    pub fn parse(text: &str) -> Result<ScopePattern, String> {
        let (stem, prefix) = match text.strip_suffix('*') {
            Some(stem) => (stem, true),
            None => (text, false),
        };
        if stem.contains('*') {
            return Err("a `*` may only end a scope".into());
        }
        if prefix && stem.is_empty() {
            return Ok(ScopePattern::Prefix(String::new()));
        }
        check_name("scope", stem).map_err(|err| err.to_string())?;
        Ok(if prefix {
            ScopePattern::Prefix(stem.to_owned())
        } else {
            ScopePattern::Exact(stem.to_owned())
        })
    }

    /// Whether `scope` is one the pattern names.
    pub fn matches(&self, scope: &str) -> bool {
        match self {
            ScopePattern::Exact(exact) => exact == scope,
            ScopePattern::Prefix(prefix) => scope.starts_with(prefix.as_str()),
        }
    }
}

impl std::fmt::Display for ScopePattern {
    /// As the mappings spell it: the scope, or the prefix followed by `*`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScopePattern::Exact(scope) => f.write_str(scope),
            ScopePattern::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// One line of the file: a group's members get `access` to the scopes of `scopes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupGrant {
    /// The group, as the provider names it in tokens.
    pub group: String,
    /// What its members may do.
    pub access: Access,
    /// Where.
    pub scopes: ScopePattern,
}

/// Every mapping of the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupGrants {
    grants: Vec<GroupGrant>,
}

impl GroupGrants {
    /// Reads the file's text; a line that does not read is refused with its number and what
    /// is wrong, and nothing of the file is taken.
    pub fn parse(text: &str) -> Result<GroupGrants, ServerError> {
        let mut grants = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let grant = parse_line(line).map_err(|problem| {
                ServerError::BadRequest(format!("group mappings, line {}: {problem}", number + 1))
            })?;
            grants.push(grant);
        }
        Ok(GroupGrants { grants })
    }

    /// The mappings, in the file's order.
    pub fn grants(&self) -> &[GroupGrant] {
        &self.grants
    }

    /// These mappings, each checked already.
    pub fn from_grants(grants: Vec<GroupGrant>) -> GroupGrants {
        GroupGrants { grants }
    }

    /// The mappings as stored; one that does not read is damage.
    pub fn from_stored(stored: &[StoredGroupGrant]) -> Result<GroupGrants, ServerError> {
        let grants = stored
            .iter()
            .map(|grant| {
                Ok(GroupGrant {
                    group: grant.group.clone(),
                    access: grant.access,
                    scopes: ScopePattern::parse(&grant.scopes).map_err(|_| {
                        ServerError::Corrupt("a stored group mapping does not read".into())
                    })?,
                })
            })
            .collect::<Result<_, ServerError>>()?;
        Ok(GroupGrants { grants })
    }

    /// The mappings as the file spells them, one a line.
    pub fn to_text(&self) -> String {
        self.grants
            .iter()
            .map(|grant| {
                format!(
                    "group \"{}\" -> {} {}\n",
                    grant.group,
                    grant.access.as_str(),
                    grant.scopes
                )
            })
            .collect()
    }

    /// What a person in `groups` may do, by scope pattern: the strongest access any of their
    /// groups gives to each pattern, in pattern order.
    pub fn for_groups(&self, groups: &[String]) -> Vec<(ScopePattern, Access)> {
        let mut access: std::collections::BTreeMap<ScopePattern, Access> =
            std::collections::BTreeMap::new();
        for grant in self.grants.iter().filter(|g| groups.contains(&g.group)) {
            let held = access.entry(grant.scopes.clone()).or_insert(grant.access);
            *held = (*held).max(grant.access);
        }
        access.into_iter().collect()
    }
}

/// `group "NAME" -> read|write SCOPE`.
fn parse_line(line: &str) -> Result<GroupGrant, String> {
    let rest = line
        .strip_prefix("group")
        .filter(|rest| rest.starts_with(char::is_whitespace))
        .ok_or("a mapping starts with `group`")?
        .trim_start();
    let rest = rest
        .strip_prefix('"')
        .ok_or("the group's name is in double quotes")?;
    let (group, rest) = rest
        .split_once('"')
        .ok_or("the group's name has no closing quote")?;
    check_name("group name", group).map_err(|err| err.to_string())?;
    let rest = rest
        .trim_start()
        .strip_prefix("->")
        .ok_or("`->` follows the group's name")?;
    let mut words = rest.split_whitespace();
    let access = match words.next() {
        Some(word) => Access::parse(word).ok_or("the access is `read` or `write`")?,
        None => return Err("the access (`read` or `write`) and a scope follow `->`".into()),
    };
    let scopes = ScopePattern::parse(words.next().ok_or("a scope follows the access")?)?;
    if words.next().is_some() {
        return Err("a mapping ends with its scope".into());
    }
    Ok(GroupGrant {
        group: group.to_owned(),
        access,
        scopes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        # therapists of the east team write its caseload; supervisors read every caseload
        group "east-therapists" -> write caseload-east
        group "supervisors" -> read caseload-*
        group "East Leads" -> write caseload-east

        group "supervisors" -> write caseload-training
    "#;

    fn names(groups: &[&str]) -> Vec<String> {
        groups.iter().map(|g| (*g).to_owned()).collect()
    }

    #[test]
    fn groups_map_to_the_strongest_access_on_each_scope_pattern() {
        let grants = GroupGrants::parse(FILE).unwrap();
        assert_eq!(grants.grants().len(), 4);
        let east = ScopePattern::Exact("caseload-east".into());
        let all = ScopePattern::Prefix("caseload-".into());
        assert_eq!(
            grants.for_groups(&names(&["supervisors", "east-therapists"])),
            vec![
                (east.clone(), Access::Write),
                (
                    ScopePattern::Exact("caseload-training".into()),
                    Access::Write
                ),
                (all.clone(), Access::Read),
            ]
        );
        assert_eq!(
            grants.for_groups(&names(&["East Leads"])),
            vec![(east.clone(), Access::Write)]
        );
        assert!(grants.for_groups(&names(&["visitors"])).is_empty());
        assert!(all.matches("caseload-west") && !all.matches("clinic-west"));
        assert!(east.matches("caseload-east") && !east.matches("caseload-east-2"));
        assert!(ScopePattern::parse("*").unwrap().matches("anything"));
        let again = GroupGrants::parse(&grants.to_text()).unwrap();
        assert_eq!(
            again, grants,
            "written out, the mappings read back the same"
        );
    }

    #[test]
    fn a_line_that_does_not_read_is_refused_with_its_number() {
        for (line, problem) in [
            ("grp \"a\" -> read s", "starts with `group`"),
            ("group a -> read s", "double quotes"),
            ("group \"a -> read s", "closing quote"),
            ("group \"a\" read s", "`->`"),
            ("group \"a\" -> own s", "`read` or `write`"),
            ("group \"a\" -> read", "a scope follows"),
            ("group \"a\" -> read s extra", "ends with its scope"),
            ("group \"a\" -> read ca*se", "may only end"),
            ("group \"a\nb\" -> read s", "closing quote"),
            ("group \"\u{202e}a\" -> read s", "control characters"),
        ] {
            let text = format!("# mappings\n\n{line}\n");
            let err = GroupGrants::parse(&text).unwrap_err().to_string();
            assert!(
                err.contains("line 3") && err.contains(problem),
                "{line:?}: {err}"
            );
        }
    }
}
