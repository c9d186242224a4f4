//! `bulwark-mock-upstream [ADDR]`: the mock OpenAI upstream as a process, for the SDK
//! tests and the benchmarks. Prints `mock listening on http://ADDR` once it is up.

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let record = std::env::var_os("MOCK_RECORD").is_some();
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("mock listening on http://{}", listener.local_addr()?);
    let (app, _log) = bulwark_testkit::mock_router(record);
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await
}
