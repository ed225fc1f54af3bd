//! The standalone server: `scaled-sockets --help`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    scaled_sockets::cli::run(scaled_sockets::App::new()).await
}
