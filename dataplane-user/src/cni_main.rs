//! `dataplane-cni`: the CNI plugin. A runtime runs it once per command with
//! `CNI_*` variables and the network configuration on stdin; it answers on
//! stdout (a result, or an error object with a non-zero exit status).

use std::io::{Read as _, Write as _};

use dataplane_user::cni::{self, plugin, CniError};

fn main() {
    let mut stdin = Vec::new();
    let outcome = std::io::stdin()
        .read_to_end(&mut stdin)
        .map_err(|e| CniError::new(cni::code::IO, "reading stdin").with_details(e.to_string()))
        .and_then(|_| cni::Env::parse(|k| std::env::var(k).ok()))
        .and_then(|env| plugin::run(&env, &stdin));
    let (out, status) = match outcome {
        Ok(Some(v)) => (Some(v), 0),
        Ok(None) => (None, 0),
        Err(e) => {
            eprintln!("dataplane-cni: {e}");
            (Some(plugin::error_json(&e, &stdin)), 1)
        }
    };
    if let Some(v) = out {
        let mut o = std::io::stdout().lock();
        let _ = writeln!(o, "{v}");
        let _ = o.flush();
    }
    std::process::exit(status);
}
