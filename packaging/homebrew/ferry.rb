# Homebrew formula for Ferry; run it as a service with `brew services start ferry`.
# Ferry has no public release yet: homepage, url and sha256 are placeholders to fill in at the
# first tag. Until then, `brew install --HEAD` from a tap that points `head` at a checkout.
class Ferry < Formula
  desc "Watches folders and reliably uploads every new or changed file"
  homepage "https://github.com/ferry-uploads/ferry"
  url "https://github.com/ferry-uploads/ferry/archive/refs/tags/v0.1.0.tar.gz"
  sha256 "0000000000000000000000000000000000000000000000000000000000000000"
  license any_of: ["MIT", "Apache-2.0"]
  head "https://github.com/ferry-uploads/ferry.git", branch: "main"

  depends_on "rust" => :build

  def install
    system "cargo", "install", *std_cargo_args
    generate_completions_from_executable(bin/"ferry", "completions")
    (man1/"ferry.1").write Utils.safe_popen_read(bin/"ferry", "manpage")
    pkgshare.install "config.example.toml"
  end

  service do
    run [opt_bin/"ferry", "run"]
    keep_alive successful_exit: false
    process_type :background
    log_path var/"log/ferry.log"
    error_log_path var/"log/ferry.log"
  end

  test do
    assert_match version.to_s, shell_output("#{bin}/ferry --version")
    # With no configuration, the daemon's built-in default is valid.
    ENV["HOME"] = testpath
    assert_match "[[watch]]", shell_output("#{bin}/ferry config check")
  end
end
