"""What only a GPU can check (pytest -m cuda; scripts/gpu_slot.sh runs them in a GPU slot): fused
Adam against foreach, fp16 with GradScaler, DeviceCrops on CUDA against the CPU cut, HostCopy's
event, CUDA-graph capture of the G and D steps (D called twice, spectral norm), DDP over nccl
with two processes on one GPU. Without CUDA every test here skips with one line."""
import copy
import os

import pytest
import torch
from PIL import Image

import train
import utils
import test_train
from conftest import natural

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason='needs a CUDA GPU (torch.cuda.is_available() is False)')]

TINY = ['--num_blocks', '2', '--crop_size', '32', '--batch_size', '4', '--workers', '0',
        '--log_every', '1000', '--cuda']
ADV = ['--mode', 'adversarial', '--content_weight', '0']


def make_state(*argv):
    """(Recipe, Runtime, TrainState) of a one-GPU run with these flags (test_train's)."""
    return test_train.make_state(*argv, base=TINY)


def batches(n: int, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        hr = torch.rand(4, 3, 32, 32, generator=g)
        out.append(tuple(x.cuda().contiguous(memory_format=torch.channels_last)
                         for x in (utils.downscale(hr, 4), hr)))
    return out


def test_fused_adam_matches_foreach():
    """train.py's CUDA Adam (fused) gives foreach's update, step after step."""
    assert train.adam_options(torch.device('cuda')) == {'fused': True}
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.PReLU(),
                              torch.nn.Conv2d(16, 3, 3)).cuda()
    twin = copy.deepcopy(net)
    fused = torch.optim.Adam(net.parameters(), 1e-3, fused=True)
    foreach = torch.optim.Adam(twin.parameters(), 1e-3, foreach=True)
    x = torch.rand(4, 3, 24, 24, device='cuda')
    for _ in range(5):
        for model, opt in ((net, fused), (twin, foreach)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for a, b in zip(net.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_fp16_with_grad_scaler_trains_both_networks():
    recipe, rt, s = make_state(*ADV, '--amp', 'fp16')
    assert rt.amp_dtype == torch.float16 and s.scaler_g.is_enabled() and s.scaler_d.is_enabled()
    g0, d0 = (copy.deepcopy(n.state_dict()) for n in (s.G, s.D))
    for lr, hr in batches(3):
        losses = train.train_step(recipe, rt, s, lr, hr)
        assert all(torch.isfinite(v).all() for v in losses.values())
    assert s.scaler_g.get_scale() > 0 and s.scaler_d.get_scale() > 0
    for net, before in ((s.G, g0), (s.D, d0)):
        assert any(not torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_device_crops_on_cuda_equal_the_cpu_cut(tmp_path):
    """The same draws cut the same HR pixels on CUDA as on the CPU (a gather: bit-equal); the
    bicubic LR of them agrees to float rounding."""
    for i in range(3):
        Image.fromarray(natural(64 + 8 * i, 72, 100 + 30 * i)).save(tmp_path / f'{i}.png')
    dataset = utils.TrainSet(str(tmp_path), 4, 32, cache=True)
    cpu, gpu = utils.DeviceCrops(dataset, 'cpu'), utils.DeviceCrops(dataset, 'cuda')
    index = torch.tensor([0, 1, 2, 1, 0, 2])
    cpu.generator.manual_seed(5)
    draws = cpu.draw(index)
    lr_cpu, hr_cpu = cpu.cut(index, *draws)
    lr_gpu, hr_gpu = gpu.cut(index.cuda(), *(d.cuda() for d in draws))
    assert torch.equal(hr_gpu.cpu(), hr_cpu)
    torch.testing.assert_close(lr_gpu.cpu(), lr_cpu, rtol=0, atol=1e-5)


def test_host_copy_waits_on_its_event():
    x = torch.arange(1000, device='cuda', dtype=torch.float32)
    y = (x @ torch.ones(1000, 1000, device='cuda'))  # work queued before the copy
    copy_ = train.HostCopy(y[:5])
    assert copy_.event is not None and copy_.host.is_pinned()
    assert copy_.values() == [float(sum(range(1000)))] * 5
    assert copy_.event.query()


@pytest.mark.parametrize('gan_loss', ['vanilla', 'ragan'])
def test_cuda_graph_steps_match_eager(gan_loss):
    """train.py --compile --compile_mode reduce-overhead (CUDA graphs) around G and D, D with
    spectral norm and called twice a step (real, fake): the losses of the first steps agree with
    the eager ones from the same weights, and the steps replay (no recompiles per step)."""
    flags = [*ADV, '--gan_loss', gan_loss, '--spectral_norm', '--amp', 'off']
    torch.manual_seed(0)
    recipe, rt, eager = make_state(*flags)
    torch.manual_seed(0)
    _, _, graphed = make_state(*flags, '--compile', '--compile_mode', 'reduce-overhead')
    data = batches(4)
    for i, (lr, hr) in enumerate(data):
        a = train.train_step(recipe, rt, eager, lr, hr)
        b = train.train_step(recipe, rt, graphed, lr, hr)
        for k in a:
            torch.testing.assert_close(b[k].float(), a[k].float(), rtol=2e-3, atol=2e-4,
                                       msg=lambda m: f'step {i}, {k}: {m}')
    for net in ('G', 'D'):  # and the weights the steps left agree too
        for p, q in zip(getattr(eager, net).parameters(), getattr(graphed, net).parameters()):
            torch.testing.assert_close(q, p, rtol=1e-2, atol=1e-4)


def _ddp_worker(rank: int, path: str, port: int) -> None:
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    try:
        torch.distributed.init_process_group('nccl', rank=rank, world_size=2,
                                             device_id=torch.device('cuda', 0))
        t = torch.full((3,), float(rank + 1), device='cuda')
        torch.distributed.all_reduce(t)
        result = f'ok {t.tolist()}'
        torch.distributed.destroy_process_group()
    except Exception as e:  # reported to the test, which decides whether it is a skip
        result = f'error {type(e).__name__}: {" ".join(str(e).split())[:300]}'
    with open(f'{path}.{rank}', 'w') as f:
        f.write(result)


def test_ddp_over_nccl_two_processes_on_one_gpu(tmp_path):
    """Two ranks on cuda:0 all-reduce over nccl; NCCL refuses two ranks on one device in some
    versions ('Duplicate GPU detected'): then the test skips, saying so."""
    if not torch.distributed.is_nccl_available():
        pytest.skip('this PyTorch has no nccl backend')
    import torch.multiprocessing as mp
    path = str(tmp_path / 'rank')
    mp.start_processes(_ddp_worker, args=(path, train.free_port()), nprocs=2, join=True,
                       start_method='spawn')
    results = [open(f'{path}.{r}').read() for r in range(2)]
    if any('Duplicate GPU' in r or 'duplicate' in r.lower() for r in results):
        pytest.skip(f'nccl refuses two ranks on one GPU here: {results[0]}')
    assert results == ['ok [3.0, 3.0, 3.0]'] * 2, results
