use berth_tests::Berthd;

#[test]
fn controller_starts_and_client_lists_the_default_service() {
    let d = Berthd::start();
    let out = d.berth(&["service", "list", "-o", "json"]).json();
    assert_eq!(out[0]["name"], "local");
    assert_eq!(out[0]["driver"], "vfs");
}
