//! How the background parts are doing, for `/readyz`. A leaf.

/// How each read model's task is doing, for `/readyz`.
#[derive(Debug, Default)]
pub struct Health {
    failing: std::sync::Mutex<std::collections::BTreeMap<&'static str, String>>,
}

impl Health {
    pub fn set(&self, name: &'static str, failure: Option<String>) {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        match failure {
            Some(cause) => {
                failing.insert(name, cause);
            }
            None => {
                failing.remove(name);
            }
        }
    }

    /// The read models whose last step failed (or whose task is restarting), with why.
    pub fn failing(&self) -> Vec<(&'static str, String)> {
        let failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        failing.iter().map(|(n, c)| (*n, c.clone())).collect()
    }
}
