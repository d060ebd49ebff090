"""The scripts' shared contract (README.md, "Conventions"): one error hierarchy whose classes
carry their exit status, run_main / @script turning one into a single stderr line, the shared
flags defined once (utils.add_flags), and the default weights per scale."""
import argparse

import pytest

import utils


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
