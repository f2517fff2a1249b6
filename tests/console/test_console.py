"""The admin console in headless Chromium, against a server seeded with clinic data: each page
loads and shows what the server holds, a revoke clicked in the console stops the device's next
sync, and a token that is not an administrator's sees nothing. Each page's screenshot is kept in
target/console-screenshots/."""

import base64
import re
import time

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

import fieldsync
from conftest import HOSTILE_NAME, Device

WHEN = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")


def wait(browser, condition, timeout=10):
    return WebDriverWait(browser, timeout).until(condition)


def sign_in(browser, token):
    field = wait(browser, EC.element_to_be_clickable((By.ID, "token")))
    field.send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "#sign-in button[type=submit]").click()


def open_page(browser, clinic, page, token=None):
    """Opens `page` of the console signed in afresh through its form; the page's section."""
    browser.get(f"{clinic.url}/admin")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{clinic.url}/admin#/{page}")
    sign_in(browser, token or clinic.admin_token)
    return wait(browser, EC.presence_of_element_located((By.ID, f"page-{page.split('?')[0]}")))


def reload_page(browser, old):
    """Waits for the page drawn after `old` went; the new page's section."""
    wait(browser, EC.staleness_of(old))
    shown = browser.execute_script("return location.hash").removeprefix("#/").split("?")[0]
    return wait(browser, EC.presence_of_element_located((By.ID, f"page-{shown or 'users'}")))


def screenshot(browser, directory, name):
    """Saves the whole page, however long, as `name`.png (through the DevTools protocol, which
    captures beyond the window)."""
    width, height = browser.execute_script(
        "const page = document.documentElement; return [page.scrollWidth, page.scrollHeight]"
    )
    shot = browser.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        },
    )
    (directory / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))


def console_problems(browser):
    """What the browser logged besides failed requests (the API's 401s and 403s, and the
    favicon the server does not have): script errors, and anything the Content Security
    Policy refused."""
    return [
        entry["message"]
        for entry in browser.get_log("browser")
        if entry["level"] in ("SEVERE", "WARNING")
        and "Failed to load resource" not in entry["message"]
    ]


def cells(row):
    return [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]


def rows(element):
    return [cells(row) for row in element.find_elements(By.CSS_SELECTOR, "tbody tr")]


def test_the_users_page_shows_each_user_and_their_devices(browser, clinic_server, screenshots):
    page = open_page(browser, clinic_server, "users")
    shown = [
        section.get_attribute("data-user")
        for section in page.find_elements(By.CSS_SELECTOR, "section.user")
    ]
    assert shown == ["clinic-admin", HOSTILE_NAME, *clinic_server.therapists]
    admin = page.find_element(By.CSS_SELECTOR, 'section.user[data-user="clinic-admin"] h3')
    assert admin.text == "clinic-admin admin"
    # Names are text, never markup.
    hostile = page.find_elements(By.CSS_SELECTOR, "section.user")[1]
    assert hostile.find_element(By.TAG_NAME, "h3").text == f"{HOSTILE_NAME} member"
    assert "<b>bold</b> tablet" in hostile.text
    assert page.find_elements(By.CSS_SELECTOR, "img, b") == []
    assert browser.title == "Fieldsync admin"
    for user in clinic_server.therapists:
        tablet = clinic_server.devices[user]
        row = page.find_element(By.CSS_SELECTOR, f'tr[data-device-id="{tablet.id}"]')
        name, device_id, last_sync, _schema, pending, state, action = cells(row)
        assert (name, device_id, state) == (tablet.name, str(tablet.id), "active")
        assert action == "Revoke device"
        assert WHEN.match(last_sync), last_sync
        # Shown once the server keeps what devices report; a dash until then.
        assert pending == "—" or pending.isdigit()
        section = page.find_element(By.CSS_SELECTOR, f'section.user[data-user="{user}"]')
        assert tablet.name in section.text
    assert console_problems(browser) == []
    screenshot(browser, screenshots, "users")


def test_the_grants_page_shows_grants_and_group_mappings(browser, clinic_server, screenshots):
    page = open_page(browser, clinic_server, "grants")
    tables = page.find_elements(By.TAG_NAME, "table")
    first, second = clinic_server.therapists
    assert rows(tables[0]) == [
        [first, "caseload-000", "write"],
        [first, "team-0", "write"],
        [second, "caseload-001", "write"],
        [second, "team-1", "write"],
    ]
    assert rows(tables[1]) == [["supervisors", "read", "caseload-*"]]
    assert console_problems(browser) == []
    screenshot(browser, screenshots, "grants")


def test_the_audit_log_is_searched_by_user_record_and_time(browser, clinic_server, screenshots):
    page = open_page(browser, clinic_server, "audit")
    newest = rows(page)
    assert len(newest) == 100, "a page of 100 lines first"
    assert {"push", "pull", "refuse (forbidden_scope)"} <= {line[3] for line in newest}

    # By user: what their tablet pushed, each of their records.
    therapist = clinic_server.therapists[0]
    search = page.find_element(By.ID, "audit-search")
    search.find_element(By.NAME, "user").send_keys(therapist)
    search.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    page = reload_page(browser, page)
    lines = rows(page)
    assert {line[1] for line in lines} == {therapist}
    pushed = {line[5] for line in lines if line[3] == "push"}
    assert pushed == set(clinic_server.records[therapist])
    assert all(WHEN.match(line[0]) for line in lines)
    screenshot(browser, screenshots, "audit")

    # By record: the one record's lines, its push among them.
    browser.get(f"{clinic_server.url}/admin#/audit?record=client-00000")
    page = reload_page(browser, page)
    lines = rows(page)
    assert {line[5] for line in lines} == {"client-00000"}
    assert [therapist, "push", "clients", "caseload-000"] in [
        [line[1], line[3], line[4], line[6]] for line in lines
    ]

    # By time: nothing from tomorrow on; everything before it.
    browser.get(f"{clinic_server.url}/admin#/audit?record=client-00000&since=2999-01-01T00:00")
    page = reload_page(browser, page)
    assert page.find_element(By.CLASS_NAME, "empty").text == "No lines match."
    browser.get(f"{clinic_server.url}/admin#/audit?record=client-00000&until=2999-01-01T00:00")
    page = reload_page(browser, page)
    assert len(rows(page)) == len(lines)

    # Paging: a longer limit shows more lines.
    browser.get(f"{clinic_server.url}/admin#/audit?limit=10")
    page = reload_page(browser, page)
    assert len(rows(page)) == 10
    page.find_element(By.XPATH, "//button[text()='Show more']").click()
    page = reload_page(browser, page)
    assert len(rows(page)) == 20
    assert console_problems(browser) == []


def test_the_sync_health_page_charts_the_sampled_counters(browser, clinic_server, screenshots):
    page = open_page(browser, clinic_server, "health")
    total = page.find_element(By.CSS_SELECTOR, 'dd[data-total="pushes"]')
    assert int(total.text) >= 2, "a push from each tablet"
    # The server samples every second: wait for a sample that holds the seeding's pushes.
    deadline = time.monotonic() + 15
    while not page.find_elements(By.CSS_SELECTOR, "figure svg polyline, figure svg circle"):
        assert time.monotonic() < deadline, "no sample came"
        time.sleep(0.5)
        page.find_element(By.XPATH, "//button[text()='Refresh']").click()
        page = reload_page(browser, page)
    legend = {
        item.get_attribute("data-series"): item.text
        for item in page.find_elements(By.CSS_SELECTOR, "ul.legend li")
    }
    pushes = int(re.match(r"Pushes: (\d+) in all", legend["pushes"]).group(1))
    assert pushes >= 2, legend
    accepted = re.match(r"Pushed and accepted: (\d+) in all", legend["records_accepted"])
    accepted = int(accepted.group(1))
    assert accepted >= sum(len(ids) for ids in clinic_server.records.values())
    assert legend["records_rejected"] == "Records refused: 1 in all"
    assert re.match(r"Push: mean \d", legend["push_latency_ms"]), legend
    assert len(page.find_elements(By.CSS_SELECTOR, "figure svg.chart")) == 6
    assert console_problems(browser) == []
    screenshot(browser, screenshots, "health")


def test_the_schema_page_shows_the_schema_and_its_versions(browser, clinic_server, screenshots):
    page = open_page(browser, clinic_server, "schema")
    assert page.find_element(By.TAG_NAME, "h2").text == "Schema version 2 is in force"
    versions = rows(page.find_element(By.TAG_NAME, "table"))
    assert [(v[0], v[2], v[3], v[4]) for v in versions] == [
        ("2", "4", "added clients.pronouns", "in force"),
        ("1", "4", "first version", ""),
    ]
    clients = page.find_element(By.CSS_SELECTOR, 'section[data-collection="clients"]')
    fields = {line[0]: line[1:] for line in rows(clients)}
    assert fields["caseload_id"] == ["string", "yes", "scope"]
    assert fields["therapist"] == ["reference", "", "→ therapists; on delete: set_null"]
    assert fields["pronouns"] == ["string", "", ""]
    assert "Indexes: by_name (name)" in clients.text
    assert console_problems(browser) == []
    screenshot(browser, screenshots, "schema")


def test_a_device_revoked_in_the_console_cannot_sync_again(browser, clinic_server, screenshots):
    phone = clinic_server.devices["phone"]
    tablet = clinic_server.devices[clinic_server.therapists[1]]
    assert phone.pull_status(clinic_server.url) == 200
    page = open_page(browser, clinic_server, "users")
    revoke = f'tr[data-device-id="{phone.id}"] button.revoke-device'

    # Cancelled: nothing happens.
    page.find_element(By.CSS_SELECTOR, revoke).click()
    dialog = wait(browser, EC.visibility_of_element_located((By.ID, "confirm")))
    assert phone.name in dialog.text
    browser.find_element(By.ID, "confirm-cancel").click()
    wait(browser, EC.invisibility_of_element_located((By.ID, "confirm")))
    assert phone.pull_status(clinic_server.url) == 200

    page.find_element(By.CSS_SELECTOR, revoke).click()
    wait(browser, EC.visibility_of_element_located((By.ID, "confirm")))
    screenshot(browser, screenshots, "users-revoke-confirm")
    browser.find_element(By.ID, "confirm-ok").click()
    page = reload_page(browser, page)
    notice = browser.find_element(By.ID, "notice").text
    assert notice == f"Device “{phone.name}” ({phone.id}) revoked."
    row = page.find_element(By.CSS_SELECTOR, f'tr[data-device-id="{phone.id}"]')
    assert cells(row)[5] == "revoked"
    assert row.find_elements(By.TAG_NAME, "button") == []

    assert phone.pull_status(clinic_server.url) == 401
    with pytest.raises(fieldsync.FieldsyncError.Unauthorized):
        phone.sync()
    # The same user's other device syncs on.
    assert tablet.pull_status(clinic_server.url) == 200
    assert tablet.sync().rejected == 0
    assert console_problems(browser) == []
    screenshot(browser, screenshots, "users-after-revoke")


def test_a_token_revoked_in_the_console_stops_working(browser, clinic_server):
    tablet = clinic_server.devices[clinic_server.therapists[0]]
    spare = Device(tablet.id, tablet.name, clinic_server.spare_token, tablet.user)
    assert spare.pull_status(clinic_server.url) == 200
    page = open_page(browser, clinic_server, "users")
    # The whole token pasted: only its id leaves the page.
    form = page.find_element(By.ID, "revoke-token")
    form.find_element(By.ID, "token-id").send_keys(spare.token)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(browser, EC.visibility_of_element_located((By.ID, "confirm")))
    browser.find_element(By.ID, "confirm-ok").click()
    reload_page(browser, page)
    token_id = spare.token.split("_")[1]
    assert browser.find_element(By.ID, "notice").text == f"Token {token_id} revoked."
    assert spare.pull_status(clinic_server.url) == 401
    assert tablet.pull_status(clinic_server.url) == 200, "the device's first token still works"
    assert console_problems(browser) == []


def test_a_token_that_is_not_an_administrators_sees_nothing(browser, clinic_server, screenshots):
    therapist = clinic_server.therapists[0]
    browser.get(f"{clinic_server.url}/admin")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{clinic_server.url}/admin#/audit")
    sign_in(browser, clinic_server.devices[therapist].token)
    refused = wait(browser, EC.visibility_of_element_located((By.ID, "not-admin")))
    assert refused.text == "This token is not an administrator's."
    main = browser.find_element(By.ID, "main")
    assert main.text == "This token is not an administrator's.\nUse another token"
    assert not browser.find_element(By.ID, "nav").is_displayed()
    source = browser.page_source
    for seen in ["clinic-admin", clinic_server.therapists[1], "client-0", "caseload-0"]:
        assert seen not in source
    assert browser.execute_script("return sessionStorage.length") == 0, "the token is forgotten"
    screenshot(browser, screenshots, "not-admin")

    # A token the server does not know: asked to sign in again.
    browser.find_element(By.XPATH, "//button[text()='Use another token']").click()
    sign_in(browser, "fs_0000000000000000_" + "0" * 64)
    problem = wait(
        browser, EC.visibility_of_element_located((By.CSS_SELECTOR, "#sign-in .refused"))
    )
    assert problem.text == "The server did not accept this token."
    assert console_problems(browser) == []
