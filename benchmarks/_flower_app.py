"""The Flower 1.41 side of ``vs_flower.py``: a ServerApp running Flower's own FedAvg
strategy (Message API) and a ClientApp doing exactly the local work a medsilo ``Site``
does (``_local_train.train_local``, a copy of ``medsilo.fed.training.train_local`` with
proximal_mu = 0, so that the Ray workers do not import medsilo and its dependencies).

Imported only by the Flower subprocess of ``vs_flower.py`` and by its Ray workers (Flower
puts the driver's ``sys.path`` on the workers' ``PYTHONPATH``).
"""

from __future__ import annotations

import os

os.environ["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"

import time
from pathlib import Path

import numpy as np
import torch
from _local_train import derive_seed, logreg, train_local
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

_DATA: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}


def _site(data_dir: str, pid: int) -> tuple[torch.Tensor, torch.Tensor]:
    key = (data_dir, pid)
    if key not in _DATA:
        with np.load(Path(data_dir) / f"site-{pid}.npz") as f:
            _DATA[key] = (torch.from_numpy(f["x"]), torch.from_numpy(f["y"]))
    return _DATA[key]


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    cfg = msg.content["config"]
    x, y = _site(str(cfg["data-dir"]), pid)
    model = logreg(int(cfg["width"]), int(cfg["classes"]))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    seed = derive_seed(int(cfg["seed"]), pid, int(cfg["server-round"]))
    loss = train_local(
        model, x, y, int(cfg["epochs"]), int(cfg["batch-size"]), float(cfg["lr"]), seed
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord(
                {
                    "train_loss": loss,
                    "num-examples": len(y),
                    "torch-threads": torch.get_num_threads(),
                }
            ),
        }
    )
    return Message(content=content, reply_to=msg)


def make_server_app(
    sites: int,
    rounds: int,
    train_config: dict[str, object],
    init: dict[str, np.ndarray],
    stamps: list[float],
    final: dict[str, np.ndarray],
    info: dict[str, float] | None = None,
) -> ServerApp:
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        # Flower's FedAvg puts "server-round" into each round's train config.
        strategy = FedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=sites,
            min_available_nodes=sites,
        )

        def stamp(server_round: int, arrays: ArrayRecord) -> None:
            stamps.append(time.perf_counter())  # called before round 1 and after each round
            return None

        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord({k: torch.from_numpy(v) for k, v in init.items()}),
            num_rounds=rounds,
            train_config=ConfigRecord(train_config),  # type: ignore[arg-type]
            evaluate_fn=stamp,
        )
        final.update({k: v.numpy() for k, v in result.arrays.to_torch_state_dict().items()})
        if info is not None and result.train_metrics_clientapp:
            last = result.train_metrics_clientapp[max(result.train_metrics_clientapp)]
            info["client_torch_threads"] = float(last["torch-threads"])

    return server_app
