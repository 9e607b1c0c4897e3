//! The StatefulLocalVolume custom resource (stub).
pub fn crd_yaml() -> Result<String, std::convert::Infallible> {
    Ok(String::new())
}
