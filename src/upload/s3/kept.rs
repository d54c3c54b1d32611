//! Whether the server keeps what objects ask for beside their bytes: the storage class
//! (`storage_class`) and the canned ACL (`acl`). Neither is data: an object stored without
//! them is there, whole. So the first object stored with one asked for is checked, a server
//! that ignored it is said once, and uploads go on.
//!
//! The storage class: AWS, moto and Ceph's gateway name an object's class in the reply to its
//! HEAD (AWS leaves STANDARD out); Ceph refuses a class it does not have. Garage takes any
//! class, even a name that is none, without a word, and stores the object in its one class;
//! s3s-fs does so for a multipart upload (and refuses a class on a PutObject). The HEAD after a
//! complete tells, or one after the first PutObject.
//!
//! The ACL: moto and Ceph's gateway list an object's grants (GetObjectAcl); s3s-fs and Garage
//! take `x-amz-acl` without a word and have no ACLs (GetObjectAcl: `501 NotImplemented`). Only
//! the canned ACLs that grant a group (everyone, or every AWS account) can be seen in the
//! grants; the others grant the owners, whom a client cannot tell apart, and are not checked.

use std::sync::atomic::{AtomicBool, Ordering};

/// Something every object asks for, and whether an object has shown what the server does with
/// it.
#[derive(Debug)]
pub(super) struct Asked {
    value: Option<String>,
    checked: AtomicBool,
    ignored: AtomicBool,
}

impl Asked {
    /// `value` asked for; `checkable`: whether a stored object can show it kept.
    pub(super) fn new(value: Option<String>, checkable: bool) -> Asked {
        Asked {
            value,
            checked: AtomicBool::new(!checkable),
            ignored: AtomicBool::new(false),
        }
    }

    pub(super) fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }

    /// Whether an object is still wanted to tell: asked for, and not yet checked.
    pub(super) fn wanted(&self) -> bool {
        self.value.is_some() && !self.checked.load(Ordering::Relaxed)
    }

    /// Gives the check up (the request that would tell failed): not worth a failing request
    /// per object.
    pub(super) fn forgo(&self) {
        self.checked.store(true, Ordering::Relaxed);
    }

    /// Takes note of a stored object, which `ignored` judges; the value asked for when this is
    /// the first object checked and the server ignored it.
    pub(super) fn note(&self, ignored: impl FnOnce(&str) -> bool) -> Option<&str> {
        let asked = self.value.as_deref()?;
        if self.checked.swap(true, Ordering::Relaxed) || !ignored(asked) {
            return None;
        }
        self.ignored.store(true, Ordering::Relaxed);
        Some(asked)
    }

    /// The value asked for, once an object showed the server ignores it.
    pub(super) fn ignored(&self) -> Option<&str> {
        self.value()
            .filter(|_| self.ignored.load(Ordering::Relaxed))
    }
}

/// Whether an object asked to be of class `asked` was stored otherwise: its HEAD names another
/// class, or none while the class asked for is not STANDARD (which AWS does not name).
pub(super) fn class_ignored(asked: &str, named: Option<&str>) -> bool {
    match named.map(str::trim) {
        Some(named) => !named.eq_ignore_ascii_case(asked),
        None => !asked.eq_ignore_ascii_case("STANDARD"),
    }
}

/// A grant of an object's ACL: the group's URI (empty for an account), the permission.
pub(super) type Grant = (String, String);

const ALL_USERS: &str = "http://acs.amazonaws.com/groups/global/AllUsers";
const AUTHENTICATED_USERS: &str = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers";

/// Whether an object stored with the canned ACL `acl` can show it kept: it grants a group.
pub(super) fn acl_checkable(acl: Option<&str>) -> bool {
    acl.is_some_and(|acl| !group_grants(acl).is_empty())
}

/// The group grants the canned ACL `acl` gives (group URI, permission); empty for the ACLs
/// that grant owners only.
fn group_grants(acl: &str) -> &'static [(&'static str, &'static str)] {
    match acl {
        "public-read" => &[(ALL_USERS, "READ")],
        "public-read-write" => &[(ALL_USERS, "READ"), (ALL_USERS, "WRITE")],
        "authenticated-read" => &[(AUTHENTICATED_USERS, "READ")],
        _ => &[],
    }
}

/// Whether an object stored with the canned ACL `acl` lacks a group grant it gives, from its
/// grants (group URI, permission), or `None` when the server has no ACLs.
pub(super) fn acl_ignored(acl: &str, grants: Option<&[Grant]>) -> bool {
    let Some(grants) = grants else {
        return true;
    };
    let granted = |(uri, permission): &(&str, &str)| {
        grants
            .iter()
            .any(|(has, gives)| has == uri && (gives == permission || gives == "FULL_CONTROL"))
    };
    !group_grants(acl).iter().all(granted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_class_is_ignored_when_the_head_names_another_or_none_but_standard() {
        let table = [
            ("STANDARD_IA", Some("STANDARD_IA"), false),
            ("STANDARD_IA", Some("standard_ia"), false),
            ("GLACIER_IR", Some("GLACIER_IR"), false),
            // AWS does not name STANDARD; Ceph's gateway does.
            ("STANDARD", None, false),
            ("STANDARD", Some("STANDARD"), false),
            // Garage, and s3s-fs for a multipart upload: nothing named.
            ("STANDARD_IA", None, true),
            ("STANDARD_IA", Some("STANDARD"), true),
            ("STANDARD", Some("REDUCED_REDUNDANCY"), true),
        ];
        for (asked, named, expected) in table {
            assert_eq!(class_ignored(asked, named), expected, "{asked} {named:?}");
        }
    }

    #[test]
    fn an_acl_is_ignored_when_a_group_grant_it_gives_is_missing() {
        let owner = ("".to_string(), "FULL_CONTROL".to_string());
        let grant = |uri: &str, permission: &str| (uri.to_string(), permission.to_string());
        let read = grant(ALL_USERS, "READ");
        let table: [(&str, Option<Vec<Grant>>, bool); 8] = [
            (
                "public-read",
                Some(vec![owner.clone(), read.clone()]),
                false,
            ),
            (
                "public-read",
                Some(vec![grant(ALL_USERS, "FULL_CONTROL")]),
                false,
            ),
            ("public-read", Some(vec![owner.clone()]), true),
            (
                "public-read",
                Some(vec![grant(AUTHENTICATED_USERS, "READ")]),
                true,
            ),
            ("public-read-write", Some(vec![read.clone()]), true),
            (
                "authenticated-read",
                Some(vec![grant(AUTHENTICATED_USERS, "READ")]),
                false,
            ),
            // No ACLs at all (GetObjectAcl not implemented).
            ("public-read", None, true),
            // Owners only: nothing a client can see.
            (
                "bucket-owner-full-control",
                Some(vec![owner.clone()]),
                false,
            ),
        ];
        for (acl, grants, expected) in table {
            assert_eq!(
                acl_ignored(acl, grants.as_deref()),
                expected,
                "{acl} {grants:?}"
            );
        }
        assert!(!acl_checkable(Some("private")) && !acl_checkable(None));
        assert!(acl_checkable(Some("authenticated-read")));
    }

    #[test]
    fn only_the_first_object_is_checked_and_said() {
        let check = Asked::new(Some("STANDARD_IA".into()), true);
        assert!(check.wanted());
        assert_eq!(check.ignored(), None);
        assert_eq!(check.note(|_| true), Some("STANDARD_IA"));
        assert_eq!(check.ignored(), Some("STANDARD_IA"));
        assert!(!check.wanted());
        assert_eq!(check.note(|_| true), None, "said once");

        let kept = Asked::new(Some("STANDARD_IA".into()), true);
        assert_eq!(kept.note(|_| false), None);
        assert!(!kept.wanted(), "checked once");
        assert_eq!(kept.ignored(), None);

        let forgone = Asked::new(Some("GLACIER".into()), true);
        forgone.forgo();
        assert!(!forgone.wanted());
        assert_eq!(forgone.note(|_| true), None);

        let uncheckable = Asked::new(Some("private".into()), false);
        assert!(!uncheckable.wanted());
        assert_eq!(uncheckable.value(), Some("private"));

        let none = Asked::new(None, true);
        assert!(!none.wanted());
        assert_eq!(none.note(|_| true), None);
    }
}
