"""The proximal term and importance scores of local training (pure tensor logic)."""

from __future__ import annotations

import torch

from edge_client.training import Proximal, accumulate_importance


def test_proximal_adds_mu_times_distance_to_the_gradient() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    loss = (w**2).sum()
    loss.backward()
    plain = w.grad.clone()
    anchor = torch.tensor([0.5, 0.0, 4.0])
    Proximal(0.1, {"w": anchor}).add_to_grad({"w": w})
    assert torch.allclose(w.grad, plain + 0.1 * (w.detach() - anchor))


def test_proximal_equals_gradient_of_the_loss_term() -> None:
    """mu * (w - anchor) is the gradient of mu/2 * ||w - anchor||^2."""
    w = torch.nn.Parameter(torch.randn(5))
    anchor = torch.randn(5)
    (0.3 / 2 * (w - anchor).pow(2).sum()).backward()
    expected = w.grad.clone()
    w.grad = None
    Proximal(0.3, {"w": anchor}).add_to_grad({"w": w})
    assert torch.allclose(w.grad, expected)


def test_zero_mu_changes_nothing() -> None:
    w = torch.nn.Parameter(torch.ones(2))
    w.grad = torch.tensor([0.5, 0.5])
    Proximal(0.0, {"w": torch.zeros(2)}).add_to_grad({"w": w})
    assert torch.equal(w.grad, torch.tensor([0.5, 0.5]))


def test_importance_is_mean_squared_gradient() -> None:
    w = torch.nn.Parameter(torch.zeros(2))
    w.grad = torch.tensor([1.0, 3.0])
    fisher = {"w": 0.0}
    accumulate_importance(fisher, {"w": w})
    assert fisher["w"] == 5.0
