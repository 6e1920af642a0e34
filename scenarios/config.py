"""A scenario file: a federation configuration plus the topology and data to simulate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from edge_client.data import DataSpec, load_pool
from fedsa_common.federation.config import (
    ConfigError,
    FederationConfig,
    Strict,
    read_yaml,
    validate_model,
)
from fedsa_common.wire.protocol import check_name
from scenarios.adversaries import AdversarySection, choose_adversaries
from scenarios.grammar import AvailabilitySection, ExpectSection, Fault, StragglerSection
from scenarios.links import LinksSection
from scenarios.overrides import apply_overrides
from scenarios.tune_section import TuneSection


class TopologySection(Strict):
    """``regions``: devices per region.  ``sites``: one Mosquitto per region, bridged to the
    cloud's over TLS as ``hub provision --site`` writes them (scenarios.sites), instead of
    one broker for everyone; needs Mosquitto and lets ``cut_link`` faults cut a site off."""

    regions: dict[str, int] = Field(min_length=1)
    sites: bool = False

    @model_serializer(mode="wrap")
    def _omit_no_sites(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """No ``sites`` key unless set, so existing scenario digests do not change."""
        data = handler(self)
        if not data.get("sites"):
            data.pop("sites", None)
        return data

    @field_validator("regions")
    @classmethod
    def _names_and_sizes(cls, v: dict[str, int]) -> dict[str, int]:
        for name, n in v.items():
            check_name("region", name)
            if n < 1:
                raise ValueError(f"region {name!r} needs at least 1 device, got {n}")
        return v

    @property
    def num_devices(self) -> int:
        return sum(self.regions.values())

    def devices(self) -> list[tuple[str, str]]:
        """(region, client id) in a stable order; the index is the device's data shard."""
        return [(r, f"{r}-{i}") for r, n in self.regions.items() for i in range(n)]


class ScenarioSection(Strict):
    name: str = Field("scenario", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    broker: str = "auto"
    topology: TopologySection
    data: dict[str, Any]
    devices_per_worker: int = Field(3, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    timeout_s: float = Field(1800.0, gt=0)
    memory_mb: float | None = Field(None, gt=0)  # each device's training budget (peak RSS)
    seed: int = 0  # churn, straggler and fault draws; the same seed replays the same way
    availability: AvailabilitySection = AvailabilitySection()
    stragglers: StragglerSection = StragglerSection()
    faults: list[Fault] = Field(default_factory=list)
    expect: ExpectSection = ExpectSection()
    adversaries: AdversarySection = AdversarySection()
    links: LinksSection = LinksSection()  # devices whose link goes down or lags

    @model_validator(mode="after")
    def _adversaries_exist(self) -> ScenarioSection:
        choose_adversaries([c for _, c in self.topology.devices()], self.adversaries, self.seed)
        return self

    @model_validator(mode="after")
    def _links_exist(self) -> ScenarioSection:
        self.links.check_names(self.topology.devices())
        return self

    @model_validator(mode="after")
    def _sites_and_faults_agree(self) -> ScenarioSection:
        """A site topology is Mosquitto processes the runner provisions and starts, so it
        cannot use another broker; ``cut_link`` needs sites, and a site's link is cut
        where a single broker would be killed."""
        sites = self.topology.sites
        if sites and self.broker not in ("auto", "mosquitto"):
            raise ValueError(f"broker: {self.broker!r} with topology.sites; the "
                             "runner starts Mosquitto brokers per site (use auto or mosquitto)")
        for i, fault in enumerate(self.faults):
            where = f"faults.{i}"
            region = fault.target.partition(":")[2]
            if fault.action == "cut_link" and not sites:
                raise ValueError(f"{where}.action: cut_link needs topology.sites: true "
                                 "(a single broker has no site links)")
            if fault.action == "cut_link" and region not in self.topology.regions:
                raise ValueError(f"{where}.target: no region {region!r} in "
                                 "topology.regions")
            if sites and fault.target == "broker":
                raise ValueError(f"{where}.target: broker with topology.sites; cut a site's "
                                 "link instead (action: cut_link, target: region:NAME)")
        return self

    @model_serializer(mode="wrap")
    def _omit_unused_sections(self, handler: SerializerFunctionWrapHandler
                                 ) -> dict[str, Any]:
        """No ``adversaries`` or ``links`` key unless set, so existing scenario digests do
        not change."""
        data = handler(self)
        if data.get("adversaries") == {}:
            del data["adversaries"]
        if not self.links.used:
            data.pop("links", None)
        return data

    @field_validator("broker")
    @classmethod
    def _broker(cls, v: str) -> str:
        if v not in ("auto", "mosquitto", "embedded") and not v.startswith("mqtt://"):
            raise ValueError("must be auto, mosquitto, embedded or mqtt://HOST:PORT")
        return v

    @field_validator("data")
    @classmethod
    def _data(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in ("num_clients", "shard", "client", "part"):
            if key in v:
                raise ValueError(f"{key} is set by the runner from the topology")
        DataSpec.model_validate({**v, "num_clients": 1})
        return v

    def device_data(self, index: int) -> DataSpec:
        """The data of device ``index`` (its position in ``topology.devices()``).

        With iid/dirichlet/grouped the runner cuts the pool into one shard per device
        (grouped: whole units of the client column per device).  With
        ``partition: column`` the file decides who the devices are: device i is the i-th
        owner in sorted order (the partitioner's order), and the topology must list exactly
        as many devices as there are owners, so that no owner's rows are silently dropped
        or trained twice.  With ``parts: k`` each owner is k devices (owner-major: device
        i is part i % k of owner i // k) and the topology lists k per owner.
        """
        n = self.topology.num_devices
        if self.data.get("partition") == "column":
            owners = self.column_owners()
            parts = int(self.data.get("parts", 1))
            if len(owners) * parts != n:
                shown = ", ".join(owners[:10]) + (", ..." if len(owners) > 10 else "")
                per = "one device" if parts == 1 else f"{parts} devices (parts)"
                raise ConfigError(
                    f"scenario.topology.regions: partition=column: "
                    f"{self.data.get('client_column')!r} in {self.data.get('source')} has "
                    f"{len(owners)} owners ({shown}) but the topology lists {n} devices; "
                    f"list {per} per owner")
            if parts == 1:
                return DataSpec.model_validate({**self.data, "client": owners[index]})
            return DataSpec.model_validate(
                {**self.data, "client": owners[index // parts], "part": index % parts})
        return DataSpec.model_validate({**self.data, "num_clients": n, "shard": index})

    def column_owners(self) -> list[str]:
        """Distinct values of the client column (after the class filter), sorted."""
        pool = load_pool(DataSpec.model_validate(self.data))
        return sorted(set(pool.owners or ()))


class ScenarioConfig(FederationConfig):
    scenario: ScenarioSection
    # read by ``scenarios tune`` only; left out of dumps so it never changes a run's digest
    tune: TuneSection | None = Field(None, exclude=True)

    def federation_config(self, num_labels: int) -> FederationConfig:
        """The part the cloud hub serves, with a classifier's label count taken from the
        data (a causal model has no labels)."""
        data = self.model_dump(exclude={"scenario"})
        if not self.model.causal:
            data["model"]["num_labels"] = num_labels
        if self.sampling.min_clients == 1 and "min_clients" not in self.model_fields_set:
            data["sampling"]["min_clients"] = self.scenario.topology.num_devices
        return FederationConfig.model_validate(data)


def load_scenario(path: Path, overrides: list[str] | None = None) -> ScenarioConfig:
    """The scenario file, with ``--set KEY=VALUE`` overrides (see scenarios/overrides.py)."""
    return validate_model(ScenarioConfig, apply_overrides(read_yaml(path), overrides or []))
