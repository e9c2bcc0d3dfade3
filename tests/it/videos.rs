//! Video jobs end to end, and the API description: `GET /openapi.json` validated as
//! OpenAPI 3.1 and checked against the endpoint table.

use crate::harness::*;

const KEY: &str = "video-test-key";

#[test]
fn openapi_json_is_valid_openapi_3_1_and_lists_every_endpoint_of_the_table() {
    let sim = start_sim();
    let gw = start_gateway(&format!("[auth]\nkeys = [\"{KEY}\"]\n"), &sim.addr);
    // No key needed.
    let resp = client().get(gw.url("/openapi.json")).send().unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().unwrap();
    let doc = json(&body);
    assert_eq!(doc["openapi"], "3.1.0");

    let mut listed: Vec<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    let mut table = freeway::proxy::openapi::paths();
    listed.sort();
    table.sort();
    assert_eq!(listed, table);
    assert!(
        table.iter().any(|p| p == "/v1/chat/completions"),
        "{table:?}"
    );
    // A keyed model endpoint says so; path parameters are declared.
    let chat = &doc["paths"]["/v1/chat/completions"]["post"];
    assert_eq!(chat["security"][0]["bearerAuth"], serde_json::json!([]));
    let file = &doc["paths"]["/v1/images/files/{id}"];
    assert_eq!(file["parameters"][0]["in"], "path");

    let path = gw.dir().join("openapi.json");
    std::fs::write(&path, &body).unwrap();
    let code = "import json, sys\n\
                from openapi_spec_validator import validate\n\
                from openapi_spec_validator.versions import consts\n\
                from openapi_spec_validator.versions.shortcuts import get_spec_version\n\
                spec = json.load(open(sys.argv[1]))\n\
                assert get_spec_version(spec) == consts.OPENAPIV31, get_spec_version(spec)\n\
                validate(spec)\n\
                print('OPENAPI OK')";
    run_python(&["-c", code, path.to_str().unwrap()], "OPENAPI OK", &|| {
        gw.log_text()
    });
}
