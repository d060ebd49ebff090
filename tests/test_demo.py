"""demo.py: first the work behind the page without a browser (bad input as one-line messages,
the progress bar fed by the tile loop, the one line without gradio), then the page itself as a
user sees it: `python demo.py` started on a free port and driven by headless Chromium through
Selenium. The browser tests share one server and one browser; they skip only when gradio,
selenium, chromium or chromedriver is missing.

Run as a script, the browser test also saves a 1280x800 screenshot of the page showing a result
and a crop comparison (README.md's images/demo.png):

    python tests/test_demo.py images/demo.png
"""
import importlib.util
import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import torch
from PIL import Image

SCREENSHOT_ENV = 'SRGAN_DEMO_SCREENSHOT'  # where the browser test saves its screenshot, if set
if __name__ == '__main__':  # before the project's modules, which only pytest puts on the path
    if len(sys.argv) != 2:
        sys.exit('usage: python tests/test_demo.py SCREENSHOT.png')
    os.environ[SCREENSHOT_ENV] = os.path.abspath(sys.argv[1])
    status = pytest.main(['-q', f'{os.path.abspath(__file__)}::test_blend_crop_and_download'])
    if status == 0 and not os.path.isfile(os.environ[SCREENSHOT_ENV]):
        sys.exit('error: the browser test was skipped, so no screenshot was taken')
    sys.exit(status)

import demo  # noqa: E402
import utils  # noqa: E402
import test_image  # noqa: E402
from conftest import ROOT, run_main, sane_generator  # noqa: E402

CHELSEA = ROOT / 'images' / 'chelsea.png'
VIEWPORT = (1280, 800)
WAIT = 120  # seconds a page update may take on a loaded 2-core machine


def one_line(e: Exception) -> str:
    text = str(e)
    assert text and '\n' not in text
    return text


# ---------------------------------------------------------------------------------------------
# The work behind the page
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def worker(tmp_path):
    return demo.Worker(str(tmp_path / 'work'), torch.device('cpu'), None, max_megapixels=1)


def test_bad_inputs_are_one_line_messages_naming_the_upload(worker, tmp_path):
    (tmp_path / 'notes.png').write_text('not an image\n')
    Image.new('RGB', (300, 300), 'gray').save(tmp_path / 'big.png')
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(
        tmp_path / 'whole.png')
    data = (tmp_path / 'whole.png').read_bytes()
    (tmp_path / 'cut.png').write_bytes(data[:len(data) // 2])

    with pytest.raises(utils.ImageError) as e:
        worker.open_input(str(tmp_path / 'notes.png'), 'notes.png', 4)
    assert one_line(e.value) == 'notes.png: not an image (unrecognised format)'
    with pytest.raises(utils.ImageError) as e:
        worker.open_input(str(tmp_path / 'cut.png'), 'cut.png', 4)
    assert one_line(e.value).startswith('cut.png: truncated or corrupt image')
    with pytest.raises(utils.ImageError) as e:  # 1200x1200 at x4 is over --max_megapixels 1
        worker.open_input(str(tmp_path / 'big.png'), 'big.png', 4)
    assert one_line(e.value) == ('big.png: 300x300 would give a 1200x1200 output of 1.44 '
                                 'megapixels, over the limit of 1; raise it with '
                                 '--max_megapixels')
    inp = worker.open_input(str(tmp_path / 'big.png'), 'big.png', 2)  # 0.36 MP at x2
    assert inp.size == (300, 300)
    with pytest.raises(utils.ImageError) as e:  # then x4 picked for it on the page
        worker.check_scale(inp, 4)
    assert one_line(e.value).startswith('big.png: 300x300 would give a 1200x1200 output')

    for scale, model, missing in [(2, 'SRGAN', 'srgan_x2'), (8, demo.BLEND, 'srgan_x8')]:
        with pytest.raises(utils.CheckpointError) as e:
            worker.generator(scale, model, 0.5)
        assert one_line(e.value) == (f'weights/{missing}.pth: no such weights file, so no '
                                     f'{model} at x{scale}; pick another model or scale')


def test_progress_is_fed_by_the_tile_loop(worker, tmp_path, monkeypatch):
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (60, 60, 3), np.uint8)).save(
        tmp_path / 'small.png')
    monkeypatch.setattr(utils, 'plan_tile', lambda *args: 56)  # 2 x 2 tiles
    # a small network in place of the shipped SRResNet x2 (the tiles, not the weights, count)
    worker.models[2, 'SRResNet', None] = utils.inference_model(sane_generator(2, 1, 8),
                                                               worker.device)
    calls = []
    inp = worker.open_input(str(tmp_path / 'small.png'), 'small.png', 2)
    result = worker.run(inp, 2, 'SRResNet', 0.5, lambda done, total: calls.append((done, total)))
    assert result.tile == 56
    assert calls[-1] == (4, 4) and [done for done, _ in calls] == sorted({d for d, _ in calls})
    assert Image.open(result.sr).size == (120, 120)


def test_ensemble_and_outscale_give_test_image_py_file(tmp_path, capsys):
    """Self-ensemble and Output scale 3 through the page's function (the shipped SRResNet x2):
    the command it shows, run, writes the same sr_ file bit for bit, at 3x the input's size."""
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (24, 32, 3), np.uint8)).save(
        tmp_path / 'small.png')
    cpu = torch.device('cpu')  # with test_image.py's default precision, --amp auto
    worker = demo.Worker(str(tmp_path / 'work'), cpu, utils.autocast_dtype('auto', cpu), 1)
    inp = worker.open_input(str(tmp_path / 'small.png'), 'small.png', 2)
    res = worker.run(inp, 2, 'SRResNet', 0.5, ensemble=True, outscale=demo.parse_outscale(3))
    assert res.command == ('python test_image.py --image small.png --upscale_factor 2 '
                           '--weight weights/srresnet_x2.pth --ensemble --outscale 3')
    assert res.out_size == (96, 72) and Image.open(res.sr).size == (96, 72)
    assert Image.open(res.bicubic).size == (96, 72)

    argv = shlex.split(res.command)[2:]  # after 'python test_image.py'
    argv[argv.index('small.png')] = tmp_path / 'small.png'
    argv[argv.index('weights/srresnet_x2.pth')] = ROOT / 'weights' / 'srresnet_x2.pth'
    rc, _, err = run_main(test_image.main, argv + ['--out_dir', tmp_path / 'ref'], capsys)
    assert rc == 0, err
    assert open(res.sr, 'rb').read() == (tmp_path / 'ref' / 'small' / 'sr_small.png').read_bytes()

    # without the options the command is the plain one; the field's values as the page sends them
    assert demo.command_line('a.png', 4, 'SRGAN', 0.5) == \
        'python test_image.py --image a.png --upscale_factor 4'
    assert demo.command_line('a.png', 4, demo.BLEND, 0.25, True, 1.5) == (
        'python test_image.py --image a.png --upscale_factor 4 --strength 0.25 --ensemble '
        '--outscale 1.5')
    assert [demo.parse_outscale(v) for v in (None, '', 0, 2.5)] == [None, None, None, 2.5]
    for bad in (-1, float('nan'), float('inf')):
        with pytest.raises(utils.UsageError) as e:
            demo.parse_outscale(bad)
        assert one_line(e.value).startswith("output scale: must be a number > 0 (empty or 0: "
                                            "the network's scale), got ")
    assert demo.output_scale(4, None) == 4 and demo.output_scale(2, 3.0) == 3.0


def test_without_gradio_demo_says_what_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, 'gradio', None)  # import gradio -> ImportError
    monkeypatch.setenv('GRADIO_TEMP_DIR', '')  # main() sets it; put it back afterwards
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
    assert demo.main([]) == 2
    assert capsys.readouterr().err == (
        "error: demo.py needs the gradio package: python -m pip install 'gradio~=6.31' (or "
        "every optional package: python -m pip install -r requirements-dev.txt)\n")
    assert list(tmp_path.iterdir()) == []  # its temporary folder is gone


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message without a GPU')
def test_cuda_without_a_gpu_is_one_line_before_gradio_is_needed(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'gradio', None)
    assert demo.main(['--cuda']) == 2
    assert capsys.readouterr().err == ('error: --cuda: no CUDA device is available (leave out '
                                       '--cuda to run on the CPU)\n')


# ---------------------------------------------------------------------------------------------
# The page in a browser
# ---------------------------------------------------------------------------------------------

def browser_missing() -> str:
    """Why the browser tests cannot run here, or ''."""
    for module in ('gradio', 'selenium'):
        if importlib.util.find_spec(module) is None:
            return f'{module} is not installed (pip install -r requirements-dev.txt)'
    for program in ('chromium', 'chromedriver'):
        if shutil.which(program) is None:
            return f'{program} is not installed (apt-get install chromium chromium-driver)'
    return ''


needs_browser = pytest.mark.skipif(bool(browser_missing()), reason=browser_missing() or '-')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Server:
    """`python demo.py --port P` started as a user starts it, in folders of its own (working
    directory, HOME, TMPDIR), so that a file it leaves anywhere is found when it stops."""

    def __init__(self, root):
        self.dirs = [root / name for name in ('cwd', 'home', 'tmp')]
        for d in self.dirs:
            d.mkdir()
        self.log = root / 'server.log'
        self.port = free_port()
        env = dict(os.environ, HOME=str(self.dirs[1]), TMPDIR=str(self.dirs[2]),
                   PYTHONUNBUFFERED='1')
        env.pop('GRADIO_TEMP_DIR', None)
        with open(self.log, 'w') as log:
            self.proc = subprocess.Popen([sys.executable, str(ROOT / 'demo.py'), '--port',
                                          str(self.port)], cwd=self.dirs[0], env=env,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + WAIT
        while 'demo: serving ' not in self.log.read_text():
            if self.proc.poll() is not None or time.time() > deadline:
                self.proc.kill()
                pytest.fail(f'demo.py did not start:\n{self.log.read_text()}')
            time.sleep(0.2)
        self.url = self.log.read_text().split('demo: serving ')[1].split()[0]

    def stop(self) -> int:
        """Stop it as a service manager does (SIGTERM); its exit status."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture(scope='module')
def server(tmp_path_factory):
    """One demo.py for the module; when the module is done it is stopped, and must exit 0
    with nothing left in its working directory, HOME or TMPDIR."""
    if browser_missing():
        pytest.skip(browser_missing())
    srv = Server(tmp_path_factory.mktemp('demo_server'))
    yield srv
    status = srv.stop()
    left = [str(p) for d in srv.dirs for p in d.rglob('*')]
    assert status == 0, srv.log.read_text()
    assert left == [], 'demo.py left files behind'


@pytest.fixture(scope='module')
def browser(tmp_path_factory):
    """Headless Chromium with a 1280x800 page; downloads go to browser.downloads."""
    if browser_missing():
        pytest.skip(browser_missing())
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    downloads = tmp_path_factory.mktemp('downloads')
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which('chromium')
    for arg in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu',
                '--hide-scrollbars'):
        opts.add_argument(arg)
    opts.add_experimental_option('prefs', {'download.default_directory': str(downloads),
                                           'download.prompt_for_download': False})
    driver = webdriver.Chrome(service=Service(shutil.which('chromedriver')), options=opts)
    driver.execute_cdp_cmd('Emulation.setDeviceMetricsOverride', {
        'width': VIEWPORT[0], 'height': VIEWPORT[1], 'deviceScaleFactor': 1, 'mobile': False})
    driver.downloads = downloads
    yield driver
    driver.quit()


def until(driver, condition, timeout: float = WAIT):
    """condition(driver)'s first true value, polled."""
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def css(driver, selector: str):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.CSS_SELECTOR, selector)


def text(driver, elem_id: str) -> str:
    return css(driver, f'#{elem_id}').text.strip()


def natural_size(driver, selector: str):
    """The pixel size of the image an <img> shows (not its size on screen), None before one."""
    from selenium.webdriver.common.by import By
    imgs = driver.find_elements(By.CSS_SELECTOR, selector)
    if not imgs:
        return None
    size = driver.execute_script('return [arguments[0].naturalWidth, arguments[0].naturalHeight]',
                                 imgs[0])
    return tuple(size) if size[0] else None


def open_page(driver, server):
    driver.get(server.url)
    until(driver, lambda d: d.find_elements('css selector', '#upload input[type=file]'))


def upload(driver, path):
    """Put `path` in the upload box (clearing the file shown there first, as a user does)."""
    from selenium.webdriver.common.by import By
    for clear in driver.find_elements(By.CSS_SELECTOR, '#upload button[aria-label=Clear]'):
        clear.click()
    field = until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, '#upload input[type=file]'))
    field[0].send_keys(str(path))


def box_shown(driver) -> tuple:
    return tuple(int(v) for v in css(driver, '#box input').get_attribute('value').split(','))


def panel_size(box: tuple, scale: int, columns: int) -> tuple:
    """The size of the crop comparison of a box of input pixels (utils.comparison): `columns`
    patches of the box's size in the output, enlarged by a whole factor to MIN_DISPLAY wide,
    with gaps and a caption strip."""
    w, h = box[2] * scale, box[3] * scale
    k = max(1, math.ceil(utils.MIN_DISPLAY / w))
    return (columns * w * k + (columns + 1) * utils.GAP,
            h * k + utils.LABEL_HEIGHT + 2 * utils.GAP)


@needs_browser
@pytest.mark.slow  # with the server's start (about 10 s), which the first browser test waits for
def test_bad_upload_is_one_line_and_the_next_upload_works(server, browser, tmp_path):
    assert server.url == f'http://127.0.0.1:{server.port}'  # this machine only by default
    (tmp_path / 'bad.png').write_text('this is text, not an image\n')
    open_page(browser, server)
    upload(browser, tmp_path / 'bad.png')
    assert until(browser, lambda d: text(d, 'message')) == \
        'error: bad.png: not an image (unrecognised format)'

    upload(browser, CHELSEA)
    until(browser, lambda d: natural_size(d, '#picker img'))
    assert text(browser, 'message') == ''
    assert box_shown(browser) == demo.default_box(Image.open(CHELSEA).size)

    # SRGAN has no x2 weights: a message on the page, and the server goes on serving
    css(browser, '#scale input[value="2"]').click()
    css(browser, '#model input[value="SRGAN"]').click()
    css(browser, '#run').click()
    assert until(browser, lambda d: text(d, 'message')) == (
        'error: weights/srgan_x2.pth: no such weights file, so no SRGAN at x2; pick another '
        'model or scale')


@needs_browser
@pytest.mark.slow
def test_blend_crop_and_download(server, browser, tmp_path):
    """Upload, the strength slider, the self-ensemble ticked, Super-resolve, a box clicked and
    one typed, Download: the file is test_image.py's for the same settings, bit for bit, and
    the crop comparison has the size of LR | Bicubic | SRResNet | Blend | SRGAN patches of the
    box."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    # test_image.py with the settings the page is about to be given, meanwhile
    script = ['test_image.py', '--image', str(CHELSEA), '--upscale_factor', '4', '--strength',
              '0.75', '--ensemble']
    reference = subprocess.Popen([sys.executable, *script, '--out_dir', str(tmp_path)],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
    for old in browser.downloads.iterdir():
        old.unlink()

    open_page(browser, server)
    upload(browser, CHELSEA)
    until(browser, lambda d: natural_size(d, '#picker img'))
    css(browser, '#scale input[value="4"]').click()
    css(browser, '#strength input[type=range]').send_keys(Keys.ARROW_RIGHT * 5)  # 0.5 -> 0.75
    until(browser, lambda d: css(d, '#model input[value="Blend"]').is_selected())
    assert css(browser, '#strength input[type=number]').get_attribute('value') == '0.75'
    css(browser, '#ensemble input[type=checkbox]').click()
    until(browser, lambda d: css(d, '#ensemble input[type=checkbox]').is_selected())
    css(browser, '#run').click()
    until(browser, lambda d: text(d, 'info') or text(d, 'message'))
    assert text(browser, 'message') == ''
    info = text(browser, 'info')
    assert 'chelsea.png: 226x150 -> 904x600 (x4, Blend 0.75, self-ensemble)' in info
    assert info.endswith('python test_image.py --image chelsea.png --upscale_factor 4 '
                         '--strength 0.75 --ensemble')
    assert natural_size(browser, '#slider img') == (904, 600)
    columns = 5  # LR | Bicubic | SRResNet | Blend 0.75 | SRGAN

    # a box by two clicks on the input picture: its corners are the clicked pixels
    picture = css(browser, '#picker img')
    ActionChains(browser).move_to_element_with_offset(picture, -40, -30).click().perform()
    first = until(browser, lambda d: 'first corner' in text(d, 'message') and text(d, 'message'))
    ActionChains(browser).move_to_element_with_offset(picture, 15, 20).click().perform()
    until(browser, lambda d: text(d, 'message') == '')
    box = box_shown(browser)
    assert first.startswith(f'first corner at {box[0]},{box[1]}') and box[2] > 20 < box[3]
    until(browser, lambda d: natural_size(d, '#panel img') == panel_size(box, 4, columns))

    # a box typed as X,Y,W,H
    field = css(browser, '#box input')
    field.clear()
    field.send_keys('60,42,40,32', Keys.ENTER)
    until(browser, lambda d: natural_size(d, '#panel img') == panel_size((60, 42, 40, 32), 4,
                                                                         columns))
    assert text(browser, 'message') == ''

    css(browser, '#download').click()
    downloaded = browser.downloads / 'sr_chelsea.png'
    until(browser, lambda d: downloaded.is_file() and not any(
        p.suffix == '.crdownload' for p in browser.downloads.iterdir()))
    out, _ = reference.communicate(timeout=WAIT)
    assert reference.returncode == 0, out
    assert downloaded.read_bytes() == (tmp_path / 'chelsea' / 'sr_chelsea.png').read_bytes()

    if os.environ.get(SCREENSHOT_ENV):
        save_screenshot(browser, os.environ[SCREENSHOT_ENV])


def save_screenshot(driver, path: str) -> None:
    """The page as the browser shows it at 1280x800, as a PNG of at most 256 colours (a
    quarter of the size; the page is mostly flat colour)."""
    driver.execute_script('window.scrollTo(0, 0)')
    raw = path + '.raw.png'
    driver.save_screenshot(raw)
    with Image.open(raw) as img:
        assert img.size == VIEWPORT
        img.convert('RGB').quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)
    os.remove(raw)
