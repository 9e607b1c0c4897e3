use std::path::{Component, Path};

use proptest::prelude::*;

use super::*;

fn toto() -> TenantId {
    TenantId::parse("toto").unwrap()
}

fn host_path(p: &str) -> Result<PathBuf, PathError> {
    RootTemplate::default()
        .root(&toto())
        .host_path(&VolumePath::parse(p)?)
}

#[test]
fn chroots_a_host_path_under_the_tenant_root() {
    assert_eq!(
        host_path("/var/log").unwrap(),
        PathBuf::from("/containerdata/user-toto/var/log")
    );
    assert_eq!(
        host_path("/etc/localtime").unwrap(),
        PathBuf::from("/containerdata/user-toto/etc/localtime")
    );
}

#[test]
fn folds_double_slashes() {
    assert_eq!(
        host_path("//var///log").unwrap(),
        PathBuf::from("/containerdata/user-toto/var/log")
    );
    assert_eq!(VolumePath::parse("/a//b").unwrap().as_string(), "/a/b");
}

#[test]
fn rejects_each_bad_path_with_a_precise_error() {
    let cases: &[(&str, PathError)] = &[
        ("", PathError::Empty),
        ("var/log", PathError::NotAbsolute("var/log".into())),
        ("/", PathError::IsRoot),
        ("///", PathError::IsRoot),
        ("/var/../etc", PathError::DotDot),
        ("/..", PathError::DotDot),
        ("/var/..", PathError::DotDot),
        ("/./var", PathError::Dot),
        ("/var/.", PathError::Dot),
        ("/var/log\0", PathError::ForbiddenChar("a NUL byte")),
        ("/var/log\n/x", PathError::ForbiddenChar("a newline")),
        ("/var/log\r", PathError::ForbiddenChar("a carriage return")),
        ("/var/log\t", PathError::ForbiddenChar("a control character")),
        (
            "/var:/etc",
            PathError::ForbiddenChar("':' (it splits Docker's -v source:target:mode)"),
        ),
        (
            "/a,b",
            PathError::ForbiddenChar("',' (it splits Marathon's and Docker's option lists)"),
        ),
        ("/a\\b", PathError::ForbiddenChar("a backslash")),
        ("/vаr", PathError::NonAscii('а')),
    ];
    for (input, want) in cases {
        assert_eq!(VolumePath::parse(input).as_ref(), Err(want), "input {input:?}");
    }
}

#[test]
fn rejects_over_long_components_and_paths() {
    let ok = format!("/{}", "a".repeat(255));
    assert!(VolumePath::parse(&ok).is_ok());
    let long_name = format!("/{}", "a".repeat(256));
    assert_eq!(
        VolumePath::parse(&long_name),
        Err(PathError::ComponentTooLong { len: 256 })
    );
    let long_path = "/abcdefghi".repeat(410);
    assert_eq!(
        VolumePath::parse(&long_path),
        Err(PathError::TooLong {
            len: 4100,
            limit: 4095
        })
    );
    // Accepted as a user path, but too long once put under the tenant root.
    let near = format!(
        "{}/{}",
        format!("/{}", "a".repeat(255)).repeat(15),
        "b".repeat(240)
    );
    assert!(VolumePath::parse(&near).is_ok());
    assert!(matches!(host_path(&near), Err(PathError::TooLong { .. })));
}

#[test]
fn rejects_paths_of_more_than_32_components() {
    let at_limit = "/a".repeat(MAX_PATH_COMPONENTS);
    assert_eq!(VolumePath::parse(&at_limit).unwrap().components().len(), 32);
    // 2,001 components fit in PATH_MAX; each would be a directory the agent creates.
    let deep = "/a".repeat(2001);
    let e = VolumePath::parse(&deep).unwrap_err();
    assert_eq!(e, PathError::TooManyComponents { count: 2001 });
    assert_eq!(e.to_string(), "has 2001 components; the limit is 32");
    // Folded slashes are not components.
    assert!(VolumePath::parse(&format!("{at_limit}//")).is_ok());
    assert!(VolumePath::parse(&format!("{at_limit}/b")).is_err());
}

#[test]
fn rejects_names_that_start_or_end_with_a_space() {
    for bad in ["/a/b ", "/ b", "/a/ /c", "/a/  "] {
        assert!(
            matches!(VolumePath::parse(bad), Err(PathError::EdgeSpace(_))),
            "{bad:?}"
        );
    }
    assert_eq!(
        VolumePath::parse("/a/b ").unwrap_err().to_string(),
        "has a component that starts or ends with a space (\"b \"): such names are easy to mistake; remove the space"
    );
    // Spaces inside a name are fine.
    assert_eq!(
        VolumePath::parse("/my data/x y").unwrap().as_string(),
        "/my data/x y"
    );
}

#[test]
fn rejects_paths_deeper_than_the_limit() {
    let at_limit = "/a".repeat(MAX_PATH_COMPONENTS);
    assert_eq!(VolumePath::parse(&at_limit).unwrap().components().len(), 32);
    let deeper = "/a".repeat(MAX_PATH_COMPONENTS + 1);
    assert_eq!(
        VolumePath::parse(&deeper),
        Err(PathError::TooManyComponents { count: 33 })
    );
    assert_eq!(
        VolumePath::parse(&deeper).unwrap_err().to_string(),
        "has 33 components; the limit is 32"
    );
}

#[test]
fn tenant_names_are_dns_labels() {
    for good in ["toto", "a", "team-1", "0abc", &"a".repeat(63)] {
        assert!(TenantId::parse(good).is_ok(), "{good}");
    }
    for bad in [
        "",
        "..",
        ".",
        "a/b",
        "Toto",
        "toto ",
        "-toto",
        "toto-",
        "to.to",
        "tоto",
        "a_b",
        &"a".repeat(64),
        "a\0",
    ] {
        assert_eq!(
            TenantId::parse(bad),
            Err(PathError::BadTenant(bad.into())),
            "{bad:?}"
        );
    }
}

#[test]
fn root_template_is_configurable() {
    let t = RootTemplate::parse("/srv/volumes/{tenant}-data").unwrap();
    let root = t.root(&toto());
    assert_eq!(root.base(), Path::new("/srv/volumes"));
    assert_eq!(root.dir_name(), "toto-data");
    assert_eq!(root.path(), PathBuf::from("/srv/volumes/toto-data"));
}

#[test]
fn root_template_rejects_bad_shapes() {
    for bad in [
        "containerdata/user-{tenant}",
        "/containerdata/user",
        "/{tenant}/data",
        "/containerdata/{tenant}{tenant}",
        "/data/../x/{tenant}",
        "/{tenant}",
        "/data/user:{tenant}",
    ] {
        assert!(
            matches!(RootTemplate::parse(bad), Err(PathError::BadTemplate(..))),
            "{bad}"
        );
    }
}

#[test]
fn app_ids_must_be_inside_the_tenant_group() {
    let rule = AppGroupRule::default();
    assert_eq!(rule.group(&toto()), "/toto");
    assert!(rule.check(&toto(), "/toto/web").is_ok());
    assert!(rule.check(&toto(), "/toto/shop/db").is_ok());
    assert_eq!(
        rule.check(&toto(), "/toto"),
        Err(PathError::AppIsGroup {
            group: "/toto".into()
        })
    );
    assert_eq!(
        rule.check(&toto(), "/toto").unwrap_err().to_string(),
        "\"/toto\" is the tenant's Marathon group itself, not an app: name an app inside /toto/, e.g. /toto/web"
    );
    for outside in ["/totoevil/web", "/tata/web", "/web"] {
        assert_eq!(
            rule.check(&toto(), outside),
            Err(PathError::AppOutsideGroup {
                app: outside.into(),
                group: "/toto".into()
            }),
            "{outside}"
        );
    }
    for bad in [
        "toto/web",
        "/toto/../tata/web",
        "/toto//web",
        "/toto/Web",
        "/toto/web/",
        "/toto/-web",
        "/toto/tasks",
    ] {
        assert!(
            matches!(rule.check(&toto(), bad), Err(PathError::BadAppId(..))),
            "{bad}"
        );
    }
}

#[test]
fn app_group_template_is_configurable() {
    let rule = AppGroupRule::parse("/tenants/{tenant}/").unwrap();
    assert!(rule.check(&toto(), "/tenants/toto/web").is_ok());
    assert!(rule.check(&toto(), "/toto/web").is_err());
    assert!(AppGroupRule::parse("/tenants").is_err());
    assert!(AppGroupRule::parse("tenants/{tenant}").is_err());
}

#[test]
fn marathon_app_ids_follow_marathon_rules() {
    for good in ["/a", "/prod/web.api", "/a-b/c1", "/x.y.z/w"] {
        assert!(MarathonAppId::parse(good).is_ok(), "{good}");
    }
    for bad in [
        "",
        "/",
        "a",
        "/a/",
        "/a/.",
        "/a/..",
        "/a..b",
        "/a/.b",
        "/A",
        "/a_b",
        "/a/restart",
        "/a/versions",
    ] {
        assert!(MarathonAppId::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn containment_is_by_component() {
    let a = VolumePath::parse("/data").unwrap();
    assert!(a.contains(&VolumePath::parse("/data/x").unwrap()));
    assert!(a.contains(&a));
    assert!(!a.contains(&VolumePath::parse("/database").unwrap()));
}

#[test]
fn namespaces_map_to_tenants() {
    let map = NamespaceMapping::new(&[("team-a-prod".into(), "teama".into())], false).unwrap();
    assert_eq!(map.tenant("team-a-prod").unwrap().as_str(), "teama");
    assert_eq!(map.tenant("toto").unwrap().as_str(), "toto");
    let only = NamespaceMapping::new(&[("team-a-prod".into(), "teama".into())], true).unwrap();
    assert!(only.tenant("toto").unwrap_err().contains("not mapped"));
    assert!(NamespaceMapping::new(&[("x".into(), "Bad".into())], false).is_err());
}

#[test]
fn an_explicit_mapping_reserves_its_tenant() {
    let map = NamespaceMapping::new(&[("team-a".into(), "toto".into())], false).unwrap();
    assert_eq!(map.tenant("team-a").unwrap().as_str(), "toto");
    let msg = map.tenant("toto").unwrap_err();
    assert!(
        msg.contains("team-a") && msg.contains("cannot be tenant toto"),
        "{msg}"
    );
    assert_eq!(
        map.tenant("tata").unwrap().as_str(),
        "tata",
        "other namespaces keep their own name"
    );
}

/// Pieces an attacker would try, mixed with ordinary names.
fn hostile_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..".to_owned()),
        Just(".".to_owned()),
        Just("/".to_owned()),
        Just("//".to_owned()),
        Just("\0".to_owned()),
        Just("\n".to_owned()),
        Just(":".to_owned()),
        Just(",".to_owned()),
        Just("\\".to_owned()),
        Just("...".to_owned()),
        Just("user-tata".to_owned()),
        Just("%2e%2e".to_owned()),
        Just("\u{2024}\u{2024}".to_owned()),
        "[a-z]{1,8}",
        "[ -~]{1,6}",
        any::<String>(),
    ]
}

fn hostile_path() -> impl Strategy<Value = String> {
    (any::<bool>(), prop::collection::vec(hostile_piece(), 0..12)).prop_map(|(abs, parts)| {
        let body = parts.join("/");
        if abs { format!("/{body}") } else { body }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    /// No accepted input ever resolves outside the tenant root, even lexically.
    #[test]
    fn accepted_host_paths_stay_beneath_the_tenant_root(input in hostile_path()) {
        let root = RootTemplate::default().root(&toto());
        if let Ok(path) = VolumePath::parse(&input) {
            let resolved = root.host_path(&path);
            if let Ok(resolved) = resolved {
                prop_assert!(resolved.starts_with(root.path()));
                prop_assert_ne!(&resolved, &root.path());
                let below = resolved.strip_prefix(root.path()).unwrap();
                for c in below.components() {
                    prop_assert!(matches!(c, Component::Normal(_)), "{:?} in {:?}", c, resolved);
                }
                let s = resolved.to_str().unwrap();
                prop_assert!(!s.contains([':', ',', '\0', '\n', '\\']));
                prop_assert!(s.len() < MAX_PATH_BYTES);
                // The plain form parses back to itself.
                prop_assert_eq!(VolumePath::parse(&path.as_string()).unwrap(), path);
            }
        }
    }

    /// Whatever a tenant name is, an accepted one is exactly one component that cannot name
    /// another tenant's root.
    #[test]
    fn accepted_tenants_are_one_plain_component(input in prop_oneof![hostile_piece(), "[a-z0-9-]{1,70}"]) {
        if let Ok(t) = TenantId::parse(&input) {
            let root = RootTemplate::default().root(&t);
            let path = root.path();
            prop_assert_eq!(path.parent().unwrap(), Path::new("/containerdata"));
            prop_assert_eq!(root.dir_name(), format!("user-{input}"));
            prop_assert!(!input.contains(['/', '.']));
        }
    }

    /// An accepted app id is always strictly inside the tenant's group.
    #[test]
    fn accepted_app_ids_are_inside_the_group(input in prop_oneof![hostile_path().prop_map(|p| format!("/toto/{p}")), hostile_path()]) {
        if let Ok(id) = AppGroupRule::default().check(&toto(), &input) {
            prop_assert!(id.as_str().starts_with("/toto/"));
            prop_assert!(!id.as_str().split('/').any(|s| s == ".." || s == "."));
        }
    }
}
