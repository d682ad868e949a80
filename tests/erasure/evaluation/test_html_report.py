"""`erasure report`: the HTML page of an ICR folder and of an I2P run, opened in headless Chromium."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from detectors import Detection
from erasure.cli import main
from erasure.evaluation.icr import wilson_interval
from erasure.evaluation.report import icr_rows, write_html_report

REPO = Path(__file__).resolve().parents[3]
INJECTION = "<script>alert(1)</script>"
PROMPTS = [f"a red circle {INJECTION}", 'a "quoted" & <b>bold</b> square', "a green triangle"]
BOX = [40.0, 44.0, 62.0, 60.0]


def _fake_icr(out: Path) -> Path:
    """An ICR folder as erasure.evaluation.icr writes it: two cells of three images; naive's first image is flagged."""
    flagged = {"naive": {0}, "geom erasing": set()}
    results = {}
    for cell, hits in flagged.items():
        (out / cell / "images").mkdir(parents=True)
        lines = []
        for i, prompt in enumerate(PROMPTS):
            Image.new("RGB", (64, 64), (40 * i, 90, 160)).save(out / cell / "images" / f"{i:05d}.png")
            detections = [{"name": "watermark", "score": 0.87, "box": BOX}] if i in hits else []
            lines.append(json.dumps({"index": i, "prompt": prompt, "seed": 7 + i, "detector": "d", "detections": []}))
            lines.append(
                json.dumps({"index": i, "prompt": prompt, "seed": 7 + i, "detector": "d2", "detections": detections})
            )
        (out / cell / "detections.jsonl").write_text("\n".join(lines) + "\n")
        n, k = len(PROMPTS), len(hits)
        results[cell] = {"icr": k / n, "ci95": list(wilson_interval(k, n)), "n": n, "flagged": k}
    results["naive"] |= {"fidelity": 0.75, "fid": 12.5}
    (out / "icr.json").write_text(
        json.dumps({"concept": "watermark", "detector": "yolo:w.safetensors", "results": results})
    )
    return out


def _fake_i2p(out: Path) -> Path:
    """An I2P run as the I2P harness and command write it: one prompt, two images, NudeNet flags the first."""
    (out / "images" / "00003").mkdir(parents=True)
    (out / "judgments").mkdir()
    for k in range(2):
        Image.new("RGB", (64, 64), (200, 100 * k, 50)).save(out / "images" / "00003" / f"{k:02d}.png")
    nudenet = [
        {"flagged": True, "detections": [{"name": "nudity", "score": 0.91, "box": BOX}]},
        {"flagged": False, "detections": []},
    ]
    q16 = [{"flagged": False, "score": 0.2}, {"flagged": True, "score": 0.64}]
    judgment = {
        "id": 3,
        "prompt": PROMPTS[0],
        "images": ["images/00003/00.png", "images/00003/01.png"],
        "judges": {"nudenet": nudenet, "q16": q16},
    }
    (out / "judgments" / "00003.json").write_text(json.dumps(judgment))
    group = {
        "prompts": 1,
        "images": 2,
        "inappropriate_probability": 1.0,
        "expected_maximum": {"mean": 1.0, "std": 0.0},
        "judges": {"nudenet": 0.5, "q16": 0.5},
    }
    results = {
        "method": {"name": "SD <i>1.5</i>"},
        "judges": ["nudenet", "q16"],
        "categories": {"sexual": group},
        "overall": group,
        "prompts": [
            {
                "id": 3,
                "prompt": PROMPTS[0],
                "categories": ["sexual"],
                "rate": 1.0,
                "judges": {"nudenet": 0.5, "q16": 0.5},
            }
        ],
    }
    (out / "results.json").write_text(json.dumps(results))
    return out


def test_rows_line_up_the_same_prompt_and_seed_across_methods(tmp_path):
    icr = _fake_icr(tmp_path)
    rows = icr_rows(icr, json.loads((icr / "icr.json").read_text())["results"])
    assert [(row.prompt, row.about) for row in rows] == [(p, f"seed {7 + i}") for i, p in enumerate(PROMPTS)]
    assert [list(row.tiles) for row in rows] == [["naive", "geom erasing"]] * 3
    # the later record of an index wins, as erasure.evaluation.icr reads them
    assert rows[0].tiles["naive"].flagged and rows[0].tiles["naive"].boxes[0]["box"] == BOX
    assert not any(row.tiles["geom erasing"].flagged for row in rows)


def test_the_page_escapes_every_text_and_links_images_relatively(tmp_path):
    page = write_html_report(_fake_icr(tmp_path)).read_text()
    assert INJECTION not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>bold</b>" not in page and "&quot;quoted&quot; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    assert page.count("<script") == 1
    assert 'src="geom%20erasing/images/00000.png"' in page
    assert not re.search(r"(src|href)=\"(https?:|//|/)", page)
    assert "12.50" in page and "75.0%" in page  # naive's fidelity and FID; geom erasing has none
    assert "<td>–</td>" in page


def test_the_demo_folder_gets_its_report_from_its_icr(tmp_path):
    _fake_icr(tmp_path / "icr")
    assert main(["report", str(tmp_path)]) == 0
    assert 'src="icr/naive/images/00000.png"' in (tmp_path / "report.html").read_text()


def test_the_i2p_page_shows_categories_and_every_judges_flags(tmp_path):
    page = write_html_report(_fake_i2p(tmp_path)).read_text()
    assert "I2P inappropriateness: SD &lt;i&gt;1.5&lt;/i&gt;" in page
    assert "<td>sexual</td>" in page and "flagged by NudeNet" in page and "flagged by Q16" in page
    assert "an image is inappropriate if NudeNet or Q16 flags it" in page
    assert "NudeNet; nudity 0.91" in page and "<figcaption>Q16 0.64</figcaption>" in page


def _chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    if re.search(r"^APT_PACKAGES :=.*\bchromium\b", (REPO / "Makefile").read_text(), re.M):
        pytest.fail("chromium is missing: `make system-deps` installs it (the Makefile's APT_PACKAGES)")
    pytest.skip("chromium is absent and the Makefile does not install it")


class Chromium:
    """Headless Chromium driven with the DevTools protocol over --remote-debugging-pipe (JSON messages ending in NUL
    on fds 3 and 4), so the test needs no port and no websocket package."""

    def __init__(self, profile: Path) -> None:
        # above fd 4, so that moving them onto 3 and 4 in the child never overwrites one with the other
        to_child, self._send = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5) for fd in os.pipe())
        self._receive, from_child = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5) for fd in os.pipe())
        flags = "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking"
        flags += " --disable-component-update --disable-sync --remote-debugging-pipe --window-size=1400,2000"
        self.process = subprocess.Popen(
            [_chromium(), *flags.split(), f"--user-data-dir={profile}"],
            preexec_fn=lambda: (os.dup2(to_child, 3), os.dup2(from_child, 4)),
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=(profile.parent / "chromium.log").open("w"),
        )
        os.close(to_child), os.close(from_child)
        self._buffer, self._next_id, self.events = b"", 0, []

    def _message(self, timeout: float = 30) -> dict:
        while b"\0" not in self._buffer:
            if not select.select([self._receive], [], [], timeout)[0]:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._receive, 1 << 16)
            if not chunk:
                raise EOFError("chromium closed the pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params} | (
            {"sessionId": session} if session else {}
        )
        os.write(self._send, json.dumps(message).encode() + b"\0")
        while (answer := self._message()).get("id") != self._next_id:
            self.events.append(answer)
        assert "error" not in answer, answer
        return answer["result"]

    def open(self, url: str) -> str:
        """A new tab at ``url``, loaded; its session id."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session)
        self.call("Page.navigate", session, url=url)
        while not any(e.get("method") == "Page.loadEventFired" and e.get("sessionId") == session for e in self.events):
            self.events.append(self._message())
        return session

    def evaluate(self, session: str, expression: str):
        result = self.call("Runtime.evaluate", session, expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def problems(self, session: str) -> list[dict]:
        """Console errors and warnings, uncaught exceptions, log errors (CSP refusals, failed loads), dialogs."""
        bad = {
            "Runtime.consoleAPICalled": lambda p: p["type"] in ("error", "warning", "assert"),
            "Runtime.exceptionThrown": lambda p: True,
            "Log.entryAdded": lambda p: p["entry"]["level"] in ("error", "warning"),
            "Page.javascriptDialogOpening": lambda p: True,
        }
        return [
            e
            for e in self.events
            if e.get("sessionId") == session and bad.get(e["method"], lambda p: False)(e["params"])
        ]

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        os.close(self._send), os.close(self._receive)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    browser = Chromium(tmp_path_factory.mktemp("chromium") / "profile")
    yield browser
    browser.close()


def test_the_icr_page_renders_in_chromium_with_boxes_filters_and_inert_prompts(tmp_path, chromium):
    session = chromium.open(write_html_report(_fake_icr(tmp_path)).as_uri())
    # the page's own script ran (its CSP hash matches) and counted the rows; nothing complained
    assert chromium.evaluate(session, "document.getElementById('shown').textContent") == "3 of 3 rows"
    assert chromium.problems(session) == []
    # every image loads from the folder (lazily: wait for each); a refused or missing one rejects decode()
    widths = "Promise.all([...document.images].map(i => i.decode().then(() => i.naturalWidth)))"
    assert chromium.evaluate(session, widths) == [64] * 6
    # the prompt with a script tag is text: no element made of it, no dialog (problems() above)
    assert chromium.evaluate(session, "document.scripts.length") == 1
    assert chromium.evaluate(session, "document.querySelector('th.prompt').firstChild.textContent") == PROMPTS[0]
    assert chromium.evaluate(session, "document.querySelectorAll('tbody b').length") == 0
    # the flagged image (naive, first row) shows its box over the image, where the detector put it
    box = chromium.evaluate(
        session,
        """(() => { const tile = document.querySelector('td.tile[data-flagged=true]');
        const img = tile.querySelector('img').getBoundingClientRect();
        const r = tile.querySelector('rect').getBoundingClientRect();
        return {flagged: document.querySelectorAll('td.tile[data-flagged=true]').length, column: tile.cellIndex,
                label: tile.querySelector('svg text').textContent,
                box: [(r.left - img.left) / img.width, (r.top - img.top) / img.height,
                      (r.right - img.left) / img.width, (r.bottom - img.top) / img.height]}; })()""",
    )
    assert box["flagged"] == 1 and box["column"] == 1 and box["label"] == "0.87"
    assert box["box"] == pytest.approx([v / 64 for v in BOX], abs=0.02)
    # the filters: flagged only keeps naive's first image and hides the rows without one
    visible = """(() => { document.querySelector('input[value=%s]').click();
        return [...document.querySelectorAll('td.tile img')].filter(i => i.checkVisibility({visibilityProperty: true}))
               .map(i => i.closest('tr').rowIndex + ':' + i.closest('td').cellIndex); })()"""
    assert chromium.evaluate(session, visible % "flagged") == ["1:1"]
    assert chromium.evaluate(session, "document.getElementById('shown').textContent") == "1 of 3 rows"
    assert len(chromium.evaluate(session, visible % "unflagged")) == 5
    assert len(chromium.evaluate(session, visible % "all")) == 6


def test_the_i2p_page_renders_in_chromium(tmp_path, chromium):
    session = chromium.open(write_html_report(_fake_i2p(tmp_path)).as_uri())
    assert chromium.evaluate(session, "document.getElementById('shown').textContent") == "1 of 1 rows"
    assert chromium.problems(session) == []
    assert chromium.evaluate(session, "document.querySelectorAll('td.tile[data-flagged=true] rect').length") == 1
    assert chromium.evaluate(session, "document.scripts.length") == 1


class FirstImageFlagged:
    """A detector that finds a watermark in the first image of each call."""

    concepts = ("watermark",)

    def detect(self, images):
        return [[Detection("watermark", 0.5, (2, 2, 20, 12))] if i == 0 else [] for i in range(len(images))]


def test_evaluate_icr_writes_the_report_of_its_table(tmp_path, tiny_sd_dir, monkeypatch, capsys, chromium):
    monkeypatch.setattr("detectors.load", lambda spec: FirstImageFlagged())
    cells = '[{name: plain}, {name: negative, negative_prompt: "{prompt}, watermark"}]'
    overrides = [
        f"model={tiny_sd_dir}",
        f"out_dir={tmp_path}",
        "num_images=2",
        "num_inference_steps=2",
        f"cells={cells}",
    ]
    config = tmp_path / "icr.yaml"
    config.write_text(f"concept: watermark\ndetector: stub\nprompts: ['{PROMPTS[0]}', a cat]\n")
    assert main(["evaluate", "icr", "--config", str(config), *overrides]) == 0
    assert f"report: {tmp_path / 'report.html'}" in capsys.readouterr().out
    session = chromium.open((tmp_path / "report.html").as_uri())
    assert chromium.problems(session) == []
    assert chromium.evaluate(session, "document.getElementById('shown').textContent") == "2 of 2 rows"
    flagged = "[...document.querySelectorAll('td.tile[data-flagged=true]')].map(t => t.cellIndex)"
    assert chromium.evaluate(session, flagged) == [1, 2]  # the first pair, in both methods' columns
