"""The scripts' shared contract (README.md, "Conventions"): one error hierarchy whose classes
carry their exit status, run_main / @script turning one into a single stderr line, the shared
flags defined once (utils.add_flags), and the default weights per scale."""
import argparse
import importlib.util
import subprocess
import sys

import pytest
from PIL import Image

import utils
from conftest import ROOT, natural, run_main
from model import Generator


# ---------------------------------------------------------------------------------------------
# Errors and exit statuses
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('cls, status', [
    (utils.SRError, 1), (utils.UsageError, 2), (utils.ImageError, 1),
    (utils.CheckpointError, 1), (utils.CheckpointPathError, 2), (utils.Interrupted, 130)])
def test_each_error_class_carries_its_exit_status(cls, status):
    assert issubclass(cls, utils.SRError) and cls.exit_status == status
    assert len(cls.__bases__) == 1  # the status is an attribute, not a second parent


@pytest.mark.parametrize('raised, status, line', [
    (utils.UsageError('--x: bad'), 2, 'error: --x: bad'),
    (utils.ImageError('a.png: truncated'), 1, 'error: a.png: truncated'),
    (utils.CheckpointPathError('w.pth: file not found'), 2, 'error: w.pth: file not found'),
    (KeyboardInterrupt(), 130, 'error: interrupted'),
])
def test_run_main_maps_errors_to_one_line_and_status(raised, status, line, capsys):
    def main(argv):
        assert argv == ['--flag']
        raise raised
    assert utils.run_main(main, ['--flag']) == status
    assert capsys.readouterr().err == line + '\n'


def test_script_decorator_returns_the_status(capsys):
    @utils.script
    def main(argv=None):
        if argv:
            raise utils.UsageError(f'{argv[0]}: file not found')
        return 0
    assert main([]) == 0
    assert main(['x.png']) == 2 and capsys.readouterr().err == 'error: x.png: file not found\n'
    assert main.__name__ == 'main'


def test_fail_takes_the_highest_status(capsys):
    assert utils.fail(utils.ImageError('a'), utils.UsageError('b')) == 2
    assert utils.fail(utils.ImageError('a')) == 1
    assert capsys.readouterr().err == 'error: a\nerror: b\nerror: a\n'


def test_check_input(tmp_path):
    (tmp_path / 'f.png').write_bytes(b'x')
    assert utils.check_input(str(tmp_path / 'f.png')) == str(tmp_path / 'f.png')
    assert utils.check_input(str(tmp_path), 'folder') == str(tmp_path)
    for path, kind, problem in ((tmp_path / 'no.png', 'file', 'file not found'),
                                (tmp_path, 'file', 'is a folder, not a file'),
                                (tmp_path / 'f.png', 'folder', 'not a folder'),
                                (tmp_path / 'nodir', 'folder', 'folder not found')):
        with pytest.raises(utils.UsageError, match=f'^{path}: {problem}$'):
            utils.check_input(str(path), kind)


# ---------------------------------------------------------------------------------------------
# Shared flags
# ---------------------------------------------------------------------------------------------

def parser_with(*names, **defaults) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    utils.add_flags(p, *names, **defaults)
    return p


def test_every_shared_flag_has_one_definition_and_its_default_once():
    p = parser_with(*utils.FLAGS)
    for action in p._actions[1:]:
        assert action.help and action.help.count('(default: ') == 1, action.option_strings
    args = p.parse_args([])
    assert (args.upscale_factor, args.weight, args.cuda, args.amp, args.tile,
            args.tile_overlap, args.max_megapixels, args.out_dir) == (
        None, None, False, 'auto', None, utils.TILE_OVERLAP, utils.MAX_MEGAPIXELS, 'results')


def test_a_script_can_change_a_default_with_its_reason():
    p = parser_with('amp', 'out_dir', amp=utils.Default('off', 'off: exact tables'),
                    out_dir=None)
    assert p.parse_args([]).amp == 'off' and p.parse_args([]).out_dir is None
    helps = {a.dest: a.help for a in p._actions}
    assert helps['amp'].endswith('(default: off: exact tables)')
    assert helps['out_dir'].endswith('(default: None)')


def test_train_py_takes_the_shared_flags_from_utils():
    """train.py defined --upscale_factor, --cuda, --amp and --out_dir itself, with other help
    (and --upscale_factor with its own list of scales)."""
    import train
    ours = {a.dest: a for a in train.build_parser()._actions}
    defaults = {'upscale_factor': utils.DEFAULT_SCALE,
                'out_dir': utils.Default(None, 'runs/<mode>_x<scale>')}
    for name in ('upscale_factor', 'cuda', 'amp', 'out_dir'):
        shared = {a.dest: a for a in parser_with(name, **{
            k: v for k, v in defaults.items() if k == name})._actions}[name]
        mine = ours[name]
        assert (mine.help, mine.type, mine.choices, mine.default, mine.metavar) == (
            shared.help, shared.type, shared.choices, shared.default, shared.metavar), name


def test_weight_is_path_or_name_equals_path():
    p = parser_with('weight')
    assert p.parse_args(['--weight', 'w/g.pth']).weight == ('g', 'w/g.pth')
    assert p.parse_args(['--weight', 'SRGAN=w/g.pth']).weight == ('SRGAN', 'w/g.pth')
    many = argparse.ArgumentParser()
    utils.flag_weight(many, [], repeat=True)
    args = many.parse_args(['--weight', 'A=a.pth', '--weight', 'b.pth', 'C=c.pth'])
    assert args.weight == [('A', 'a.pth'), ('b', 'b.pth'), ('C', 'c.pth')]


@pytest.mark.parametrize('argv', [['--tile', '-1'], ['--tile_overlap', '-2'],
                                  ['--upscale_factor', '3'], ['--amp', 'fp8'],
                                  ['--max_megapixels', '0']])
def test_bad_shared_flag_values_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parser_with(*utils.FLAGS).parse_args(argv)
    assert e.value.code == 2 and argv[0] in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Default weights
# ---------------------------------------------------------------------------------------------

def test_default_weights_cover_every_scale_flag_choice():
    p = parser_with('upscale_factor')
    (action,) = [a for a in p._actions if a.dest == 'upscale_factor']
    assert sorted(utils.DEFAULT_WEIGHTS) == list(action.choices)
    for scale, files in utils.DEFAULT_WEIGHTS.items():
        assert files == {'srresnet': f'{utils.WEIGHTS_DIR}/srresnet_x{scale}.pth',
                         'srgan': f'{utils.WEIGHTS_DIR}/srgan_x{scale}.pth'}


# ---------------------------------------------------------------------------------------------
# Every script keeps the contract: a missing input exits 2, a bad flag 2, a corrupt input 1,
# each with exactly one line on stderr; inputs are checked before any model is built
# ---------------------------------------------------------------------------------------------

def load_script(name: str):
    """A script by file name (the root's, or scripts/'s), imported as a module (utils.py: the
    module the tests share, so its error classes are the ones run_main knows)."""
    if name == 'utils.py':
        return utils
    path = ROOT / name
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    # registered while it runs, as an import would (dataclasses look their module up there)
    saved = sys.modules.get(path.stem)
    sys.modules[path.stem] = module
    try:
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            del sys.modules[path.stem]
        else:
            sys.modules[path.stem] = saved
    return module


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    """A tiny weights file, an image folder, and corrupt versions of each kind of input."""
    root = tmp_path_factory.mktemp('contract')
    weight = root / 'tiny_x4.pth'
    utils.save_weights(Generator(4, num_blocks=1, channels=8), str(weight))
    images = root / 'images'
    images.mkdir()
    Image.fromarray(natural(48, 48)).save(images / 'a.png')
    (root / 'bad.png').write_text('not an image')
    (root / 'bad.mp4').write_text('not a video')
    (root / 'bad.pth').write_bytes(b'not a weights file')
    (root / 'a_file').write_text('a file, not a folder')
    for name in ('Set5', 'Set14'):  # what scripts/pack_slot_data.py packs beside the photos
        (root / 'benchmarks' / name).mkdir(parents=True)
        Image.fromarray(natural(48, 48)).save(root / 'benchmarks' / name / 'a.png')
    return root


# script -> (argv with a missing input, argv with a corrupt input or None); M = a missing
# folder, I = the inputs, O = an output folder
CASES = {
    'test_image.py': (['--image', 'M/no.png', '--weight', 'I/tiny_x4.pth', '--out_dir', 'O'],
                      ['--image', 'I/bad.png', '--weight', 'I/tiny_x4.pth', '--out_dir', 'O']),
    'test_video.py': (['--video', 'M/no.mp4', '--weight', 'I/tiny_x4.pth', '--out_dir', 'O'],
                      ['--video', 'I/bad.mp4', '--weight', 'I/tiny_x4.pth', '--out_dir', 'O']),
    'evaluate.py': (['--data', 'M/Set5'],
                    ['--data', 'I/images', '--weight', 'I/bad.pth']),
    'get_img_crop.py': (['--image', 'M/no.png', '--box', '0,0,4,4'],
                        ['--image', 'I/bad.png', '--box', '0,0,4,4', '--out_dir', 'O']),
    'train.py': (['--trainset_dir', 'M/train', '--out_dir', 'O/run', '--epochs', '1'],
                 ['--trainset_dir', 'I/images', '--pretrain', 'I/bad.pth', '--out_dir', 'O/run',
                  '--epochs', '1', '--num_blocks', '1', '--workers', '0', '--crop_size', '32']),
    'scripts/plot_strength.py': (['--data', 'M/Set14', '--out', 'O/p.png'],
                                 ['--data', 'I/images', '--weight', 'I/bad.pth',
                                  '--weight_psnr', 'I/tiny_x4.pth', '--out', 'O/p.png']),
    'scripts/export_onnx.py': (['--weight', 'M/no.pth', '--output', 'O/g.onnx'],
                               ['--weight', 'I/bad.pth', '--output', 'O/g.onnx']),
    'scripts/transfer_scale.py': (['--weight', 'M/no.pth', '--upscale_factor', '2',
                                   '--output', 'O/g.pth'],
                                  ['--weight', 'I/bad.pth', '--upscale_factor', '2',
                                   '--output', 'O/g.pth']),
    # its input is a server (tests/test_download.py serves broken files); here the folder
    'scripts/download_data.py': (['benchmarks', '--data_dir', 'I/a_file/data'], None),
    'scripts/pack_slot_data.py': (['--train', 'M/train', '--benchmarks', 'I/benchmarks',
                                   '--out', 'O/slot_data'], None),
    'utils.py': (['--input', 'M/DIV2K', '--output', 'O/sub'], None),  # sub-image preparation
}
# scripts that take no input path: the bad-flag case only
NO_INPUT = ['demo.py']


def fill(argv: list, inputs, tmp_path) -> list:
    places = {'M': str(tmp_path / 'missing'), 'I': str(inputs), 'O': str(tmp_path / 'out')}
    return [places[a[0]] + a[1:] if a[:2] in ('M/', 'I/') or a in ('M', 'I', 'O')
            or a.startswith('O/') else a for a in argv]


def run_script(name: str, argv: list, capsys) -> tuple:
    return run_main(load_script(name).main, argv, capsys)


@pytest.mark.parametrize('name', CASES)
def test_missing_input_exits_2_with_one_line_before_any_model(name, inputs, tmp_path, capsys,
                                                              monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError('a model was built before the inputs were checked')
    monkeypatch.setattr(Generator, '__init__', no_model)
    rc, out, err = run_script(name, fill(CASES[name][0], inputs, tmp_path), capsys)
    assert rc == 2, err
    assert err.count('\n') == 1 and err.startswith('error: ') and 'Traceback' not in err, err
    assert str(tmp_path / 'missing') in err or 'a_file' in err
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('name', [*CASES, *NO_INPUT])
def test_bad_flag_exits_2(name, capsys):
    rc, out, err = run_script(name, ['--no_such_flag'], capsys)
    assert rc == 2 and 'error: ' in err and 'Traceback' not in err


@pytest.mark.parametrize('name', [n for n, (_, corrupt) in CASES.items() if corrupt])
def test_corrupt_input_exits_1_with_one_line(name, inputs, tmp_path, capsys):
    rc, out, err = run_script(name, fill(CASES[name][1], inputs, tmp_path), capsys)
    assert rc == 1, err
    assert err.count('\n') == 1 and err.startswith('error: ') and 'Traceback' not in err, err
    assert f'{inputs}/bad.' in err


def test_a_shell_sees_the_same_status_and_line(inputs, tmp_path):
    """The status of the process and its one line, as a shell sees them (download_data.py:
    the one script that starts without torch, so this stays fast)."""
    blocked = inputs / 'a_file' / 'data'
    res = subprocess.run([sys.executable, str(ROOT / 'scripts' / 'download_data.py'),
                          'benchmarks', '--data_dir', str(blocked)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 2 and res.stdout == ''
    assert res.stderr.count('\n') == 1 and res.stderr.startswith('error: --data_dir ')
