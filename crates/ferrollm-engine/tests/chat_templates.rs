//! The models' own chat templates rendered by minijinja must equal transformers'
//! `apply_chat_template` output (fixtures: scripts/ref/chat_template_fixtures.py).

use std::path::PathBuf;

use ferrollm_engine::chat_template::ChatTemplate;
use serde_json::Value;

#[test]
fn templates_render_exactly_as_transformers() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/chat_templates.json");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut checked = 0;
    for m in fx["models"].as_array().unwrap() {
        let t = ChatTemplate::new(
            m["chat_template"].as_str().unwrap(),
            m["bos_token"].as_str().unwrap_or(""),
            m["eos_token"].as_str().unwrap_or(""),
        )
        .unwrap();
        for c in m["cases"].as_array().unwrap() {
            let tools = c.get("tools").filter(|t| !t.is_null());
            let got = t.render_json(&c["messages"], tools, c["add_generation_prompt"].as_bool().unwrap()).unwrap();
            assert_eq!(got, c["expected"].as_str().unwrap(), "{} / {}", m["name"], c["name"]);
            checked += 1;
        }
    }
    assert_eq!(checked, 28);
}
