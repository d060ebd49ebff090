"""scripts/plot_strength.py: every point label sits where it overlaps no line, no marker and no
other label, inside the frame (the published picture's scores, and crowded ones)."""
import importlib.util
import json

import pytest

from conftest import ROOT

_spec = importlib.util.spec_from_file_location('plot_strength',
                                               ROOT / 'scripts' / 'plot_strength.py')
plot_strength = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot_strength)


def overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def crowded() -> list:
    """Five strengths close together on a straight line, Bicubic right beside them."""
    rows = [{'method': 'blend', 'strength': s, 'psnr_y': 27 - s * 0.2, 'niqe': 6 - s * 0.3}
            for s in (0, 0.25, 0.5, 0.75, 1)]
    return rows + [{'method': 'Bicubic', 'strength': None, 'psnr_y': 26.95, 'niqe': 5.9},
                   {'method': 'HR', 'strength': None, 'niqe': 5.75}]


@pytest.mark.parametrize('rows', [json.loads((ROOT / 'images' / 'strength_tradeoff.json')
                                             .read_text()), crowded()],
                         ids=['published', 'crowded'])
def test_labels_overlap_no_line_marker_or_label(rows, tmp_path):
    placed, segments, frame = plot_strength.draw(rows, 'title', str(tmp_path / 'p.png'))
    assert [label for label, _ in placed] == ['HR (NIQE {:.2f})'.format(rows[-1]['niqe'])] + [
        f"strength {s:g}" for s in (0, 0.25, 0.5, 0.75, 1)] + ['Bicubic']
    blends = [label for label in placed if label[0].startswith('strength')]
    for label, box in blends + [placed[-1]]:
        assert not plot_strength._hits(box, segments, pad=0), label
        assert frame[0] <= box[0] and box[2] <= frame[2], label
        assert frame[1] <= box[1] and box[3] <= frame[3], label
    markers = [(x - 6, y - 6, x + 6, y + 6) for seg in segments[:-1] for x, y in seg]
    boxes = [box for _, box in placed]
    assert not any(overlap(m, b) for m in markers for b in boxes)
    for i, a in enumerate(boxes):
        assert not any(overlap(a, b) for b in boxes[i + 1:]), placed[i][0]


def test_hits_sees_a_segment_through_a_box():
    assert plot_strength._hits((10, 10, 20, 20), [((0, 15), (30, 15))], pad=0)
    assert not plot_strength._hits((10, 10, 20, 20), [((0, 25), (30, 25))], pad=0)
