# Headless Chromium and its WebDriver for the browser tests (tests/tests/web_browser.rs).
if have_deb chromium && have_deb chromium-driver && command -v chromedriver >/dev/null 2>&1; then
    say "chromium and chromium-driver already installed"
else
    say "installing chromium and chromium-driver (browser tests)"
    apt_install chromium chromium-driver
    chromium --version >&2 || say "WARNING: chromium installed but does not run"
fi
