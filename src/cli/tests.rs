use super::*;

#[test]
fn a_volume_is_named_with_its_namespace() {
    let r: VolumeRef = "toto/db".parse().unwrap();
    assert_eq!((r.namespace.as_str(), r.name.as_str()), ("toto", "db"));
    assert_eq!(r.to_string(), "toto/db");
    for bad in ["db", "/db", "toto/", "toto/db/x", ""] {
        let e = bad.parse::<VolumeRef>().unwrap_err();
        assert!(e.contains("is not NAMESPACE/VOLUME"), "{bad:?}: {e}");
    }
}

#[test]
fn refusals_exit_with_2_and_failures_with_1() {
    let refused = Error::Refused(Refusal::Deleting {
        volume: "toto/db".into(),
    });
    assert_eq!(refused.exit_code(), EXIT_REFUSED);
    let missing = Error::NotFound {
        volume: "toto/db".into(),
        namespace: "toto".into(),
    };
    assert_eq!(missing.exit_code(), EXIT_REFUSED);
    assert_eq!(Error::Conflict("toto/db".into()).exit_code(), EXIT_FAILED);
    assert_eq!(Error::WatchEnded("toto".into()).exit_code(), EXIT_FAILED);
}
