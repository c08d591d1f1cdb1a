"""CUDA graphs are a GPU-only speed-up: these check the switch and that elsewhere a step is a plain
call. That graphed steps reproduce eager ones is measured on a GPU by bench/graph_check.py."""

import torch

from core.graphs import GraphedStep, graphs_enabled


def test_graphs_are_on_for_cuda_unless_switched_off(monkeypatch):
    monkeypatch.delenv("CORRAL_CUDA_GRAPHS", raising=False)
    assert graphs_enabled(torch.device("cuda"))
    assert not graphs_enabled(torch.device("cpu"))
    monkeypatch.setenv("CORRAL_CUDA_GRAPHS", "0")
    assert not graphs_enabled(torch.device("cuda"))


def test_on_the_cpu_a_graphed_step_is_a_plain_call_every_time():
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)

    def step(x: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = (weight * x).sum()
        loss.backward()
        optimizer.step()
        return loss.detach()

    graphed = GraphedStep(step, torch.device("cpu"), optimizer=optimizer)
    losses = [float(graphed(torch.full((3,), 2.0))) for _ in range(6)]
    # each call stepped: w falls by lr * 2 per call, so the loss 3 * 2 * w falls by 1.2 per call
    torch.testing.assert_close(torch.tensor(losses), torch.tensor([6.0, 4.8, 3.6, 2.4, 1.2, 0.0]),
                               rtol=0, atol=1e-5)
    assert graphed.captures == 0 and not graphed.graphs


class _CaptureFails(GraphedStep):
    """A step whose capture raises, as an op that cannot be recorded would; no GPU needed."""

    def _on_side_stream(self, inputs):
        return self.fn(*inputs)

    def _capture(self, inputs, signature):
        raise RuntimeError("operation not permitted when stream is capturing")


def test_a_step_whose_capture_fails_runs_eagerly_from_then_on(caplog):
    calls = []
    step = _CaptureFails(lambda x: calls.append(x) or x * 2, torch.device("cpu"), warmup=2)
    step.enabled = True  # as on a GPU
    results = [float(step(torch.tensor(float(i)))) for i in range(5)]
    assert results == [0.0, 2.0, 4.0, 6.0, 8.0] and len(calls) == 5  # no call lost or doubled
    assert not step.enabled and "runs eagerly from now on" in caplog.text
