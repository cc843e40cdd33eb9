"""The status page in a real headless Chromium (Debian's chromium + chromium-driver, selenium).

Selenium blocks: every browser call runs in a thread (`deferToThread`) so that the reactor
keeps serving the daemon and the fake factory, and every wait has its own deadline.
"""

import json
import shutil
import tempfile

import pytest
import pytest_twisted
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from talos_twisted.schematic import Overlay, Schematic

from .conftest import sha256
from .rawhttp import open_raw

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 20.0  # seconds for any one thing to appear in the page (it polls every second)
# without the background-networking flags Chromium's connections are refused on a closed network
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


def header(resp, name):
    values = resp.headers.getRawHeaders(name)
    return values[0] if values else None


class Browser:
    """A Chromium driven from threads; `severe` collects the console's errors as they come."""

    def __init__(self, driver):
        self.driver = driver
        self.severe = []

    async def call(self, fn, *args):
        return await deferToThread(fn, *args)

    async def open(self, url):
        await self.call(self.driver.get, url)

    async def wait(self, what, condition, timeout=WAIT):
        """`condition(driver)`'s first truthy value within `timeout` seconds."""
        def until():
            try:
                return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(condition)
            except TimeoutException:
                raise AssertionError(f"not within {timeout:g}s: {what}") from None
        return await self.call(until)

    async def text(self, element_id):
        return await self.call(lambda: self.driver.find_element(By.ID, element_id).text)

    async def check_console(self):
        logs = await self.call(self.driver.get_log, "browser")
        self.severe += [e for e in logs if e["level"] == "SEVERE"]
        assert not self.severe, f"console errors: {self.severe}"


@pytest.fixture
def browser(stack):  # on `stack`: the browser quits before the daemon stops
    profile = tempfile.mkdtemp(prefix="chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + (f"--user-data-dir={profile}",):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the packaged driver by path: Selenium Manager would try to download one
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT)
    try:
        yield Browser(driver)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def row_with(table_id, key_part):
    """A condition: the row of `table_id` whose data-key contains `key_part`."""
    def find(driver):
        for row in driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr"):
            if key_part in (row.get_attribute("data-key") or ""):
                return row
        return None
    return find


@pytest_twisted.ensureDeferred
async def test_lists_a_cached_image_without_console_errors(stack, browser):
    resp, body = await stack.get(stack.image_url(query="?extensions=qemu-guest-agent"))
    assert resp.code == 200
    sid = header(resp, "X-Talos-Schematic")
    await browser.open(stack.url + "/")
    row = await browser.wait("the cached image listed", row_with("entries", sid))
    cells = await browser.call(lambda: [c.text for c in row.find_elements(By.TAG_NAME, "td")])
    assert cells[0] == "/images/talos/v1.11.2/amd64/openstack.raw?extensions=siderolabs/qemu-guest-agent"
    assert cells[1] == sid[:12] + "\u2026" and cells[2] == "4.0 MiB" and cells[5] == sha256(body)
    assert "ago" in cells[4]
    assert await browser.text("f-base") == stack.factory_url
    await browser.wait("the poll's status", lambda d: d.find_element(By.ID, "conn").text == "live")
    assert await browser.text("f-latest") == "v1.11.2"  # the image request fetched the versions
    assert await browser.text("downloads-empty") == "none"
    # the favicon is served (no 404 in the console) and the page kept polling without errors
    resp, icon = await stack.get(stack.url + "/favicon.ico")
    assert resp.code == 200 and icon.startswith(b"<svg")
    await browser.check_console()


@pytest.mark.parametrize("compression,rate,size_known", [
    ("none", 200_000, True),  # the Content-Length is the final size: a determinate bar, an ETA
    ("xz", 4_000, False),  # the size is known at the end only: an indeterminate bar, no ETA
])
@pytest_twisted.ensureDeferred
async def test_a_running_download_advances(stack, browser, compression, rate, size_known):
    await stack.stop_daemon()
    await stack.start_daemon(compression=compression)
    stack.fake.rate_limit = rate
    # a GET that reads as the bytes come: the download runs, with one follower
    client = await open_raw(stack.url, "/images/talos/v1.11.2/amd64/metal.raw?extensions=qemu-guest-agent")
    try:
        await browser.open(stack.url + "/")
        row = await browser.wait("the download listed", row_with("downloads", "/metal"))
        bar = await browser.call(row.find_element, By.CSS_SELECTOR, "progress.bar")

        def bytes_shown(driver):
            return int(bar.get_dom_attribute("data-bytes") or 0)

        first = await browser.wait("some bytes", lambda d: bytes_shown(d) or None)
        later = await browser.wait("more bytes", lambda d: bytes_shown(d) if bytes_shown(d) > first else None)
        assert later > first
        cells = await browser.call(lambda: [c.text for c in row.find_elements(By.TAG_NAME, "td")])
        path = await browser.call(lambda: row.find_element(By.TAG_NAME, "code").text)
        assert path == "/images/talos/v1.11.2/amd64/metal.raw?extensions=siderolabs/qemu-guest-agent"
        assert cells[1] == "streaming"
        assert cells[6] == "1"  # followers
        assert cells[4].endswith("/s")
        bar_max = await browser.call(bar.get_dom_attribute, "max")
        if size_known:
            assert bar_max == str(4 * 1024 * 1024) and cells[3].endswith("/ 4.0 MiB")
            assert int(await browser.call(bar.get_dom_attribute, "value")) >= first
            assert cells[5] != "?"  # the ETA
        else:
            assert bar_max is None and cells[5] == "?" and cells[3].endswith("/ ?")
    finally:
        stack.fake.rate_limit = 0  # read live by the fake: the rest comes at once
        await client.closed.addTimeout(WAIT, reactor)
    await browser.wait("the download gone", lambda d: not d.find_elements(By.CSS_SELECTOR, "#downloads tbody tr"))
    await browser.wait("the image cached", row_with("entries", "/metal"))
    await browser.check_console()


@pytest_twisted.ensureDeferred
async def test_builder_url_downloads_the_chosen_image(stack, browser):
    await browser.open(stack.url + "/")
    d = browser.driver
    await browser.wait("the catalog loaded", lambda d: d.find_elements(
        By.CSS_SELECTOR, '#b-extensions option[value="siderolabs/qemu-guest-agent"]'))
    await browser.wait("the overlays loaded", lambda d: d.find_elements(
        By.CSS_SELECTOR, '#b-overlay option[value="rpi_generic"]'))
    await browser.wait("the platforms", lambda d: d.find_elements(By.CSS_SELECTOR, '#b-platform option[value="metal"]'))

    def choose():
        Select(d.find_element(By.ID, "b-arch")).select_by_value("arm64")
        Select(d.find_element(By.ID, "b-platform")).select_by_value("metal")
        Select(d.find_element(By.ID, "b-extensions")).select_by_value("siderolabs/qemu-guest-agent")
        Select(d.find_element(By.ID, "b-overlay")).select_by_value("rpi_generic")

    await browser.call(choose)
    want = f"{stack.url}/images/talos/latest/arm64/metal.raw?extensions=qemu-guest-agent&overlay=rpi_generic"
    await browser.wait("the image URL", lambda d: d.find_element(By.ID, "out-image").text == want)
    sha_url = await browser.text("out-sha256")
    assert sha_url == want.replace("metal.raw?", "metal.raw.sha256?")
    metal3 = await browser.call(lambda: d.find_element(By.ID, "out-metal3").text)
    assert f'url: "{want}"' in metal3 and f'checksum: "{sha_url}"' in metal3
    assert "checksumType: sha256" in metal3 and "format: raw" in metal3
    assert await browser.text("out-pxe") == f"{stack.url}/pxe/<schematic-id>/v1.11.2/metal-arm64"

    # the URL is the image chosen: its schematic, its bytes, its checksum
    resp, body = await stack.get(want)
    assert resp.code == 200 and header(resp, "X-Talos-Version") == "v1.11.2"
    sid = Schematic(extensions=("siderolabs/qemu-guest-agent",),
                    overlay=Overlay("rpi_generic", "siderolabs/sbc-raspberrypi")).id
    assert header(resp, "X-Talos-Schematic") == sid
    assert body == stack.fake.raw_image(sid, "v1.11.2", "metal", "arm64")
    resp, text = await stack.get(sha_url)
    assert text.decode() == f"{sha256(body)}  metal.raw\n"

    # once cached, the page knows the schematic ID: the PXE URL is complete, this server
    # answers the script, and its kernel URL is this server's copy of the factory's kernel
    doc = json.loads((await stack.get(stack.url + "/status.json"))[1])
    assert [e["schematic"] for e in doc["entries"]] == [sid]
    pxe = f"{stack.url}/pxe/{sid}/v1.11.2/metal-arm64"
    await browser.wait("the PXE URL", lambda d: d.find_element(By.ID, "out-pxe").text == pxe)
    resp, script = await stack.get(pxe)
    assert resp.code == 200 and script.startswith(b"#!ipxe"), script[:80]
    kernel = next(line.split()[1] for line in script.decode().splitlines() if line.startswith("kernel "))
    assert kernel == f"{stack.url}/image/{sid}/v1.11.2/kernel-arm64"
    resp, body = await stack.get(kernel)
    assert resp.code == 200 and body == stack.fake.asset(sid, "v1.11.2", "kernel-arm64")
    await browser.check_console()


@pytest_twisted.ensureDeferred
async def test_data_from_the_factory_is_text_not_markup(stack, browser, monkeypatch):
    from talos_twisted.testing.fakefactory import app

    evil = 'evil/<img src=x onerror="document.title=`owned`">'
    real = app.extensions_catalog
    monkeypatch.setattr(app, "extensions_catalog", lambda v: real(v) + [{"name": evil}])
    await browser.open(stack.url + "/")
    option = await browser.wait("the hostile name listed", lambda d: d.find_elements(
        By.CSS_SELECTOR, '#b-extensions option[value^="evil/"]'))
    assert await browser.call(lambda: option[0].text) == evil.split("/", 1)[1]  # its short name, as text
    await browser.call(lambda: Select(browser.driver.find_element(By.ID, "b-extensions")).select_by_value(evil))
    image = await browser.wait("the URL", lambda d: "extensions=" in d.find_element(By.ID, "out-image").text and
                               d.find_element(By.ID, "out-image").text)
    assert image.endswith("?extensions=%3Cimg%20src%3Dx%20onerror%3D%22document.title%3D%60owned%60%22%3E")
    assert await browser.call(lambda: browser.driver.find_elements(By.TAG_NAME, "img")) == []
    assert await browser.call(lambda: browser.driver.title) == "talos-images"
    await browser.check_console()
