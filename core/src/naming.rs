//! DataJoint's names: tiers, class names and the table names they map to (datajoint-python 2.x
//! conventions, which its clients rely on to recognise tiers).

use std::fmt;

/// PostgreSQL's identifier limit (NAMEDATALEN - 1).
pub const MAX_NAME_LENGTH: usize = 63;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    Lookup,
    Manual,
    Imported,
    Computed,
    Part,
}

impl Tier {
    pub const ALL: [Tier; 5] = [Tier::Lookup, Tier::Manual, Tier::Imported, Tier::Computed, Tier::Part];

    /// The tier named by `text` (case-insensitive), as `dj.declare` takes it.
    pub fn parse(text: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(text.trim()))
    }

    pub fn name(self) -> &'static str {
        match self {
            Tier::Lookup => "lookup",
            Tier::Manual => "manual",
            Tier::Imported => "imported",
            Tier::Computed => "computed",
            Tier::Part => "part",
        }
    }

    /// The prefix a master table of this tier carries in its SQL name.
    pub fn prefix(self) -> &'static str {
        match self {
            Tier::Manual | Tier::Part => "",
            Tier::Lookup => "#",
            Tier::Imported => "_",
            Tier::Computed => "__",
        }
    }

    /// Populated by `make` (keys must come from foreign keys).
    pub fn is_auto_populated(self) -> bool {
        matches!(self, Tier::Imported | Tier::Computed)
    }

    /// The tier of a table from its SQL name, as datajoint-python infers it; `None` for names
    /// outside the conventions (hidden `~` tables, nested parts, mixed case).
    pub fn of_table(table: &str) -> Option<Tier> {
        if is_base(table) {
            Some(Tier::Manual)
        } else if table.strip_prefix('#').is_some_and(is_base) {
            Some(Tier::Lookup)
        } else if table.strip_prefix("__").is_some_and(is_base) {
            Some(Tier::Computed)
        } else if table.strip_prefix('_').is_some_and(is_base) {
            Some(Tier::Imported)
        } else if split_part(table).is_some() {
            Some(Tier::Part)
        } else {
            None
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `[a-z][a-z0-9]*(_[a-z][a-z0-9]*)*`: a snake_case name without tier prefix.
fn is_base(name: &str) -> bool {
    !name.is_empty()
        && name.split('_').all(|word| {
            let mut chars = word.chars();
            chars.next().is_some_and(|c| c.is_ascii_lowercase())
                && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
}

/// A part table's name `master__part` split into the master's SQL name and the part's base name.
/// The master is a Manual, Lookup, Imported or Computed name; the part a base name.
pub fn split_part(table: &str) -> Option<(&str, &str)> {
    let at = table.rfind("__").filter(|&i| i > 0)?;
    let (master, part) = (&table[..at], &table[at + 2..]);
    let master_tier = Tier::of_table(master)?;
    (master_tier != Tier::Part && is_base(part)).then_some((master, part))
}

/// CamelCase to snake_case as datajoint-python does it: every capital is lowercased, and one not at
/// the start of the name gets an underscore before it (`HTTPServer` → `h_t_t_p_server`,
/// `Scan3D` → `scan3_d`).
pub fn to_snake_case(class_name: &str) -> String {
    let mut out = String::with_capacity(class_name.len() + 4);
    for (i, c) in class_name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// snake_case (with any tier prefix) back to CamelCase: `#lookup_table` → `LookupTable`.
pub fn to_camel_case(table: &str) -> String {
    let mut out = String::with_capacity(table.len());
    let mut upper_next = true;
    for c in table.chars() {
        if c == '_' || !(c.is_ascii_alphanumeric()) {
            upper_next = true;
        } else if upper_next && c.is_ascii_alphabetic() {
            out.push(c.to_ascii_uppercase());
            upper_next = false;
        } else {
            out.push(c);
            upper_next = false;
        }
    }
    out
}

/// Whether `name` is a valid class name: `^[A-Z][A-Za-z0-9]*$`.
pub fn is_class_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase()) && chars.all(|c| c.is_ascii_alphanumeric())
}

/// The SQL table name of a master class of `tier`.
pub fn master_table_name(class_name: &str, tier: Tier) -> String {
    format!("{}{}", tier.prefix(), to_snake_case(class_name))
}

/// The SQL table name of part `part_class` of the master table `master_table`.
pub fn part_table_name(master_table: &str, part_class: &str) -> String {
    format!("{master_table}__{}", to_snake_case(part_class))
}

/// The class name of a table, `Master.Part` for parts.
pub fn class_name_of(table: &str) -> String {
    match split_part(table) {
        Some((master, part)) => format!("{}.{}", to_camel_case(master), to_camel_case(part)),
        None => to_camel_case(table),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_convert_like_datajoint_python() {
        for (class, table) in [
            ("Session", "session"),
            ("MySession", "my_session"),
            ("HTTPServer", "h_t_t_p_server"),
            ("Table2", "table2"),
            ("Table2B", "table2_b"),
            ("Scan3D", "scan3_d"),
            ("ABC", "a_b_c"),
        ] {
            assert_eq!(to_snake_case(class), table, "{class}");
        }
        for (table, class) in [
            ("#lookup_table", "LookupTable"),
            ("__comp", "Comp"),
            ("session__trial", "SessionTrial"),
            ("h_t_t_p_server", "HTTPServer"),
            ("~lineage", "Lineage"),
        ] {
            assert_eq!(to_camel_case(table), class, "{table}");
        }
    }

    #[test]
    fn tiers_follow_the_table_name_prefix() {
        assert_eq!(Tier::of_table("session"), Some(Tier::Manual));
        assert_eq!(Tier::of_table("#rig"), Some(Tier::Lookup));
        assert_eq!(Tier::of_table("_scan"), Some(Tier::Imported));
        assert_eq!(Tier::of_table("__spike_rate"), Some(Tier::Computed));
        assert_eq!(Tier::of_table("__pair__channel"), Some(Tier::Part));
        assert_eq!(Tier::of_table("#rig__slot"), Some(Tier::Part));
        assert_eq!(Tier::of_table("session__trial"), Some(Tier::Part));
        assert_eq!(Tier::of_table("a__b__c"), None, "no nested parts");
        assert_eq!(Tier::of_table("~lineage"), None);
        assert_eq!(Tier::of_table("~~pair"), None);
        assert_eq!(Tier::of_table("Session"), None);
        assert_eq!(split_part("__pair__channel"), Some(("__pair", "channel")));
        assert_eq!(class_name_of("__pair__channel"), "Pair.Channel");
        assert_eq!(class_name_of("#rig"), "Rig");
    }

    #[test]
    fn table_names_per_tier() {
        assert_eq!(master_table_name("SpikeRate", Tier::Computed), "__spike_rate");
        assert_eq!(master_table_name("Rig", Tier::Lookup), "#rig");
        assert_eq!(master_table_name("Scan", Tier::Imported), "_scan");
        assert_eq!(master_table_name("Session", Tier::Manual), "session");
        assert_eq!(part_table_name("__pair", "Channel"), "__pair__channel");
        assert!(is_class_name("Scan3D") && !is_class_name("scan") && !is_class_name("My_Table"));
        assert_eq!(Tier::parse(" Computed "), Some(Tier::Computed));
        assert_eq!(Tier::parse("job"), None);
    }
}
