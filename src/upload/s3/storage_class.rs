//! Whether the server keeps the storage class asked for (`storage_class`).
//!
//! AWS, moto and Ceph's gateway name an object's class in the reply to its HEAD (AWS leaves
//! STANDARD out); Ceph refuses a class it does not have. Garage takes any class, even a name
//! that is none, without a word, and stores the object in its one class; s3s-fs does so for a
//! multipart upload (and refuses a class on a PutObject). An ignored class costs money, not
//! data: the object is there, whole. So the first object stored with a class asked for is
//! checked (the HEAD after a complete, or one after the first PutObject), and an ignored class
//! is said once; uploads go on.

use std::sync::atomic::{AtomicBool, Ordering};

/// The class asked for, and whether an object has shown what the server does with it.
#[derive(Debug)]
pub(super) struct ClassCheck {
    asked: Option<String>,
    checked: AtomicBool,
}

impl ClassCheck {
    pub(super) fn new(asked: Option<String>) -> ClassCheck {
        ClassCheck {
            asked,
            checked: AtomicBool::new(false),
        }
    }

    pub(super) fn asked(&self) -> Option<&str> {
        self.asked.as_deref()
    }

    /// Whether an object's HEAD is still wanted to tell: a class is asked for, not yet checked.
    pub(super) fn wanted(&self) -> bool {
        self.asked.is_some() && !self.checked.load(Ordering::Relaxed)
    }

    /// Gives the check up (a HEAD that failed): not worth a failing request per object.
    pub(super) fn forgo(&self) {
        self.checked.store(true, Ordering::Relaxed);
    }

    /// Takes note of the class a stored object's HEAD names (`named`); the class asked for
    /// when this is the first object checked and the server ignored it.
    pub(super) fn note(&self, named: Option<&str>) -> Option<&str> {
        let asked = self.asked.as_deref()?;
        if self.checked.swap(true, Ordering::Relaxed) {
            return None;
        }
        ignored(asked, named).then_some(asked)
    }
}

/// Whether an object asked to be of class `asked` was stored otherwise: its HEAD names another
/// class, or none while the class asked for is not STANDARD (which AWS does not name).
fn ignored(asked: &str, named: Option<&str>) -> bool {
    match named.map(str::trim) {
        Some(named) => !named.eq_ignore_ascii_case(asked),
        None => !asked.eq_ignore_ascii_case("STANDARD"),
    }
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
            assert_eq!(ignored(asked, named), expected, "{asked} {named:?}");
        }
    }

    #[test]
    fn only_the_first_object_is_checked_and_said() {
        let check = ClassCheck::new(Some("STANDARD_IA".into()));
        assert!(check.wanted());
        assert_eq!(check.note(None), Some("STANDARD_IA"));
        assert!(!check.wanted());
        assert_eq!(check.note(None), None, "said once");

        let kept = ClassCheck::new(Some("STANDARD_IA".into()));
        assert_eq!(kept.note(Some("STANDARD_IA")), None);
        assert!(!kept.wanted(), "checked once");

        let forgone = ClassCheck::new(Some("GLACIER".into()));
        forgone.forgo();
        assert!(!forgone.wanted());
        assert_eq!(forgone.note(None), None);

        let none = ClassCheck::new(None);
        assert!(!none.wanted());
        assert_eq!(none.note(None), None);
    }
}
