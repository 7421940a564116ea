"""Presets for the KV-cache memory tiers below GPU HBM and the links they sit behind.

Model. A lower tier is a store for KV-cache blocks with a *device* limit (its own read
and write bandwidth and an access latency) that is reached over a *link* (the GPU's
PCIe slot, NVLink-C2C, or a NIC). The two are separate limits: moving ``B`` bytes from a
tier costs at least ``latency + B / read_bw`` on the device and at least ``B / link_bw``
on the link. Tiers that sit behind the same link share it: host DRAM, a CXL expander and
an NVMe SSD all reach the GPU through the GPU's one PCIe Gen5 x16 slot, so their
transfers in one iteration add up on that link (``to_arrays`` gives such tiers the same
``link_id``). ``docs/semantics.md`` §5.6 has the exact transfer-time rule.

Units and conventions:

- GB = 1e9 bytes, GB/s = 1e9 bytes/s; link bandwidths are per direction.
- Every figure is one GPU's share. Capacities are defaults, not measurements (each
  preset's ``sources["capacity_gb"]`` says how it was chosen). Device bandwidths of
  resources that a whole node shares (host DRAM, Optane) are the node figure divided by
  the node's 8 GPUs; a CXL expander, an SSD and a 400G NIC are one per GPU. A GH200 has
  one GPU per Grace CPU, so ``grace`` gets the whole Grace memory.
- Link bandwidth is the measured host-to-device rate where the data has one (the
  direction of KV loads); otherwise the nominal rate times a stated efficiency.
- ``static_power_w`` is the device's idle draw; ``energy_pj_per_bit`` is the device's
  own energy per bit moved. The energy spent on the *link* is not part of either (the
  data has NVLink-C2C ~1.3 pJ/bit, PCIe Gen5 ~6.5 pJ/bit [derived, low confidence] and
  400G optics ~22.5 pJ/bit [derived]). NaN means no source was found.
- ``sources`` maps every numeric field to where it came from:
  ``presets.json:<key path>`` is a leaf of the project data file
  ``shared/data/presets.json`` (compiled from public sources), followed by the URL stored
  there and, for a derived number, the arithmetic.

Known simplifications: a tier has exactly one link, so ``remote`` sits behind its NIC
only, although on HGX nodes GPUDirect RDMA traffic also crosses the GPU's PCIe link; and
the per-transfer software cost of RDMA KV transfers (~0.4 ms per transfer in the
Mooncake/vLLM table, presets.md §7) is not in ``remote``'s latency.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

#: GPUs per node for the per-GPU share of node-wide resources (an 8-GPU HGX node, as in
#: presets.json:links.nvlink4_h100_nvswitch_8gpu and Mooncake's 8x400G node).
GPUS_PER_NODE = 8
#: Fields of a tier that ``to_arrays`` overrides accept.
OVERRIDABLE = ("capacity_gb", "read_gbps", "write_gbps", "latency_us", "static_power_w",
               "energy_pj_per_bit")
_NUMERIC_TIER_FIELDS = ("capacity_gb", "read_gbps", "write_gbps", "latency_us",
                        "static_power_w", "energy_pj_per_bit")
_NAN = math.nan

# URLs as stored in presets.json (one constant per source, so each is spelled once).
_U_MICRON_CZ120 = "https://meterpreter.org/micron-launches-cz120-memory-expansion-module"
_U_STREAM = "https://www.ai-hpc.org/en/guide/02-cluster/stream-benchmark"
_U_CXL_LAT = "https://www.nextplatform.com/2022/12/05/just-how-bad-is-cxl-memory-latency/"
_U_DATACRUNCH = ("https://datacrunch.io/blog/"
                 "data-movement-in-the-nvidia-gh200-grace-hopper-superchip")
_U_GRACE_BLOG = ("https://developer.nvidia.com/blog/"
                 "nvidia-grace-hopper-superchip-architecture-in-depth/")
_U_TOMS_CZ120 = ("https://www.tomshardware.com/news/"
                 "micron-unveils-128gb-256gb-cxl-2-expansion-modules")
_U_HEIMDALL = ("https://hb.int2inf.com/s/item/TMVKyogwLuwzzmiHVQex8k-cxl-heterogeneous-"
               "memory-performance (summary of arXiv 2411.02814)")
_U_MELODY = "https://arxiv.org/abs/2409.14317"
_U_CXL_X = "https://arxiv.org/abs/2405.14209"
_U_CXL_X8 = "https://ecrionix.org/protocols/cxl-memory-expander/"
_U_OPTANE_PAPER = ("https://paperium.net/article/concentrated-differential-privacy/3781/"
                   "basic-performance-measurements-of-the-intel-optane-dc-persistent-"
                   "memory-module (review of arXiv 1903.05714)")
_U_OPTANE_VENDOR = ("https://www.pcper.com/news/Storage/"
                    "Intels-Optane-DC-Persistent-Memory-DIMMs-Push-Latency-Closer-DRAM")
_U_OPTANE_6DIMM = "https://grayxu.cn/wiki/PM (notes on arXiv 1903.05714)"
_U_PM1743 = ("https://computerbase.de/2021-12/"
             "samsung-pm1743-pcie-5.0-ssd-mit-13-gb-s-und-2.5-mio.-iops-fuer-server")
_U_PM1743_EFF = ("https://pcjow.com/"
                 "samsung-introduced-the-pcie-gen-5-ssd-with-a-speed-of-13000-mb-s/")
_U_MICRON9400 = ("https://computerbase.de/2023-01/"
                 "micron-9400-ssd-alle-modelle-lesen-und-schreiben-mit-7-gb-s")
_U_MICRON9200 = ("https://vdocument.in/"
                 "9200-nvme-ssds-2-steady-state-as-defined-by-snia-solid-state-storage-"
                 "performance.html")
_U_MOONCAKE = ("https://www.usenix.org/conference/fast25/presentation/qin "
               "(Mooncake, FAST'25; arXiv 2407.00079)")
_U_IB_LAT = ("https://git.dennispotter.eu/Dennis/masters-thesis/raw/commit/"
             "1995c04f8af7a026550961b343ddaaf4cba4f893/tables/mtu_performance.tex")
_U_ROCE_LAT = ("https://www.slideshare.net/slideshows/q1-memory-fabric-forum-advantages-"
               "of-optical-cxl-for-disaggregated-compute-architectures/266312309")
_U_KLOCKWOOD_A100 = "https://www.glennklockwood.com/garden/processors/A100"
_U_KLOCKWOOD_H100 = "https://www.glennklockwood.com/garden/processors/H100"
_U_NVBW_42 = "https://github.com/NVIDIA/nvbandwidth/issues/42"
_U_BAM = "https://github.com/ZaidQureshi/bam/issues/54"
_U_NVBW_24 = "https://github.com/NVIDIA/nvbandwidth/issues/24"
_U_KTH_C2C = ("4nownews.com reprint of an HPCwire report on a KTH GH200 study "
              "(exact URL not retained)")
_U_AZURE_IB = "https://github.com/Azure/azurehpc-health-checks/issues/46"
_U_NCCL_307 = "https://github.com/NVIDIA/nccl/issues/307"
_U_GDS_THEORY = "https://gds-report.pages.dev/theory"
_U_C2C_ENERGY = ("https://sgline.org/what-is-nvlink-nvidia-blogs (copy of NVIDIA blog "
                 "'What Is NVLink?')")
_U_OPTICS = "https://docs.nvidia.com/networking/display/mms4x00ns400/overview"
_U_AI_INFRA = ("https://alpha-one-index.github.io/ai-infra-index/specs/"
               "networking-interconnects.html")

_NO_POWER = "no source: presets.json has no idle-power figure for this device (NaN)"
_NO_ENERGY = "no source: presets.json has no energy-per-bit figure for this device (NaN)"


@dataclasses.dataclass(frozen=True)
class LinkPreset:
    """A link between the GPU and one or more tiers.

    Attributes:
        name: key in ``LINK_PRESETS``.
        description: what the link is.
        gbps: usable per-direction bandwidth seen by one GPU, GB/s (measured where
            available).
        sources: field name -> where the number came from.
    """

    name: str
    description: str
    gbps: float
    sources: dict[str, str] = dataclasses.field(hash=False)

    def __post_init__(self):
        if not (math.isfinite(self.gbps) and self.gbps > 0):
            raise ValueError(f"link.{self.name}.gbps = {self.gbps!r}: must be finite > 0")
        if "gbps" not in self.sources:
            raise ValueError(f"link.{self.name}: sources has no entry for 'gbps'")


@dataclasses.dataclass(frozen=True)
class TierPreset:
    """A KV-cache tier below HBM (one GPU's share; see the module docstring).

    Attributes:
        name: short key used in configurations (key in ``TIER_PRESETS``).
        description: what the tier is and what it sits behind.
        capacity_gb: default capacity per GPU, GB (a default, not a measurement).
        read_gbps, write_gbps: device read / write bandwidth, GB/s.
        latency_us: access latency, microseconds.
        link: name of the link preset the tier sits behind (key of ``LINK_PRESETS``).
        static_power_w: idle power of the device share, W (NaN if unknown).
        energy_pj_per_bit: device energy per bit moved, pJ/bit (NaN if unknown).
        sources: field name -> source (presets.json key path and URL) and derivation.
    """

    name: str
    description: str
    capacity_gb: float
    read_gbps: float
    write_gbps: float
    latency_us: float
    link: str
    static_power_w: float
    energy_pj_per_bit: float
    sources: dict[str, str] = dataclasses.field(hash=False)

    def __post_init__(self):
        for f in ("read_gbps", "write_gbps"):
            v = getattr(self, f)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"tier.{self.name}.{f} = {v!r}: must be finite > 0")
        for f in ("capacity_gb", "latency_us"):
            v = getattr(self, f)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"tier.{self.name}.{f} = {v!r}: must be finite >= 0")
        missing = [f for f in _NUMERIC_TIER_FIELDS if f not in self.sources]
        if missing:
            raise ValueError(f"tier.{self.name}: sources has no entry for {missing}")


# --------------------------------------------------------------------------------------
# Links
# --------------------------------------------------------------------------------------

_LINKS = [
    LinkPreset(
        name="pcie4",
        description="PCIe Gen4 x16 between host and GPU (e.g. A100 hosts)",
        gbps=25.13,
        sources={
            "gbps": (
                "presets.json:links.pcie4_x16.h2d_gbs_measured_a100 = 25.13 GB/s [meas] "
                f"nvbandwidth SM-copy H2D on A100 SXM4 ({_U_NVBW_42}); drops to ~16.5 GB/s "
                "at 20 GiB buffers. Agrees with presets.json:links.pcie4_x16."
                f"h2d_gbs_measured_bam = 25 GB/s ({_U_BAM}). Nominal "
                "presets.json:links.pcie4_x16.nominal_gbs_per_dir = 32 GB/s "
                f"({_U_KLOCKWOOD_A100}), so 25.13/32 = 0.79 of nominal."
            ),
        },
    ),
    LinkPreset(
        name="pcie5",
        description="PCIe Gen5 x16 between host and GPU (H100/H200/B200 HGX hosts)",
        gbps=35.2,
        sources={
            "gbps": (
                "presets.json:links.pcie5_x16.h2d_gbs_measured_h100_sm = 35.2 GB/s [meas] "
                f"nvbandwidth SM-copy H2D on H100, one platform ({_U_NVBW_24}). The same "
                "platform's D2H is 52.8 GB/s (presets.json:links.pcie5_x16."
                "d2h_gbs_measured_h100_sm); the H2D (KV-load) direction is used. Nominal "
                "presets.json:links.pcie5_x16.nominal_gbs_per_dir = 64 GB/s "
                f"({_U_KLOCKWOOD_H100}), so 35.2/64 = 0.55 of nominal (platform dependent)."
            ),
        },
    ),
    LinkPreset(
        name="nvlink_c2c",
        description="NVLink-C2C between Grace CPU and Hopper GPU (GH200)",
        gbps=375.0,
        sources={
            "gbps": (
                "presets.json:links.nvlink_c2c_gh200.h2d_gbs_measured = 375 GB/s [meas] "
                f"KTH GH200 study, confidence medium ({_U_KTH_C2C}). D2H measured 297 GB/s "
                "(presets.json:links.nvlink_c2c_gh200.d2h_gbs_measured); the H2D (KV-load) "
                "direction is used. Nominal presets.json:links.nvlink_c2c_gh200."
                f"nominal_bw_gbs_bidir = 900 GB/s bidir = 450 per direction ({_U_GRACE_BLOG})"
                ", so 375/450 = 0.83 of nominal."
            ),
        },
    ),
    LinkPreset(
        name="nic_200g",
        description="one 200 Gb/s RDMA NIC per GPU (InfiniBand HDR / 200G RoCE)",
        gbps=194 / 8,
        sources={
            "gbps": (
                "presets.json:links.infiniband_hdr_200g.ib_write_bw_gbps_measured = "
                f"194 Gb/s [meas] per HDR port on Azure NDv4 ({_U_AZURE_IB}); "
                "194 Gb/s / 8 bit/B = 24.25 GB/s. NCCL reaches ~24 GB/s per port "
                f"(presets.json:links.infiniband_hdr_200g.nccl_gbs_per_port, {_U_NCCL_307})."
            ),
        },
    ),
    LinkPreset(
        name="nic_400g",
        description="one 400 Gb/s RDMA NIC per GPU (InfiniBand NDR / 400GbE RoCE)",
        gbps=43.4 * 2**30 / 1e9,
        sources={
            "gbps": (
                "presets.json:links.gpudirect_storage.nfs_over_rdma_400gbe_gibs = 43.4 GiB/s"
                f" [meas] NFS over RDMA on 400GbE ({_U_GDS_THEORY}); 43.4 * 2^30 / 1e9 = "
                "46.60 GB/s (0.93 of the 50 GB/s line rate, presets.json:links."
                f"infiniband_ndr_400g.line_rate_gbps = 400 Gb/s, {_U_AI_INFRA}). A "
                "secondary table gives 48 GB/s per direction (presets.json:links."
                "infiniband_ndr_400g.effective_gbs_bidir = 96 GB/s bidir)."
            ),
        },
    ),
]

LINK_PRESETS: dict[str, LinkPreset] = {p.name: p for p in _LINKS}


# --------------------------------------------------------------------------------------
# Tiers
# --------------------------------------------------------------------------------------

_DRAM_BW = (
    "presets.json:tiers.host_dram_ddr5.dual_spr_peak_gbs = 614.4 GB/s, 2S Xeon 8470 with "
    f"DDR5-4800 ({_U_STREAM}) x presets.json:tiers.host_dram_ddr5.stream_efficiency_typical"
    " = 0.7-0.8 (source 'derived', confidence low; midpoint 0.75 used) / "
    f"{GPUS_PER_NODE} GPUs per node = 614.4 * 0.75 / 8 = 57.6 GB/s per GPU. No separate "
    "write figure: write = read. Above the PCIe link either way, so the link binds."
)
_DRAM_LAT = (
    "presets.json:tiers.host_dram_ddr5.idle_latency_ns = 100 ns ('sub-100 ns' for "
    f"CPU-attached DDR; {_U_CXL_LAT}) = 0.1 us"
)
_SSD_LAT = (
    "presets.json:tiers.nvme_latency_and_idle.qd1_read_latency_us = 92-150 us (Micron 9200, "
    f"Gen3, typical QD1 read; {_U_MICRON9200}); midpoint 121 us used as a stand-in (no "
    "Gen4/Gen5 QD1 figure in presets.json). QD1 write to the power-backed cache is 21 us "
    "(presets.json:tiers.nvme_latency_and_idle.qd1_write_latency_us)."
)
_SSD_IDLE = (
    "presets.json:tiers.nvme_latency_and_idle.idle_power_w = 8 W (Micron 9200 Gen3 "
    f"datasheet; {_U_MICRON9200}) as a stand-in; DISAGREEMENT: another revision of that "
    "datasheet says <5 W (presets.json:power.device_power.nvme_idle_w_micron9200 = 5-8 W)."
)

_TIERS = [
    TierPreset(
        name="dram",
        description="host DDR5 DRAM (2-socket Sapphire Rapids), behind PCIe Gen5 x16",
        capacity_gb=256.0,
        read_gbps=614.4 * 0.75 / GPUS_PER_NODE,
        write_gbps=614.4 * 0.75 / GPUS_PER_NODE,
        latency_us=0.1,
        link="pcie5",
        static_power_w=_NAN,
        energy_pj_per_bit=_NAN,
        sources={
            "capacity_gb": "default, not a measurement: an assumed 2 TB of host DRAM per "
                           "8-GPU node / 8 = 256 GB per GPU",
            "read_gbps": _DRAM_BW,
            "write_gbps": _DRAM_BW,
            "latency_us": _DRAM_LAT,
            "static_power_w": "no source: presets.json:power.device_power.ddr5_rdimm_w is "
                              f"null (GAP; {_U_STREAM})",
            "energy_pj_per_bit": "no source: presets.json:tiers.energy_per_bit.ddr5 is null "
                                 f"(GAP; {_U_STREAM})",
        },
    ),
    TierPreset(
        name="dram_pcie4",
        description="host DRAM behind PCIe Gen4 x16 (e.g. A100 hosts)",
        capacity_gb=256.0,
        read_gbps=614.4 * 0.75 / GPUS_PER_NODE,
        write_gbps=614.4 * 0.75 / GPUS_PER_NODE,
        latency_us=0.1,
        link="pcie4",
        static_power_w=_NAN,
        energy_pj_per_bit=_NAN,
        sources={
            "capacity_gb": "default, not a measurement: an assumed 2 TB of host DRAM per "
                           "8-GPU node / 8 = 256 GB per GPU",
            "read_gbps": "same device figure as 'dram' (presets.json has DDR5 figures only; "
                         "an A100-era DDR4 host has less): " + _DRAM_BW + " As long as the "
                         "host gives each GPU more than the 25.13 GB/s of PCIe Gen4, the "
                         "link binds.",
            "write_gbps": "same as read_gbps (see there): " + _DRAM_BW,
            "latency_us": "same as 'dram': " + _DRAM_LAT,
            "static_power_w": "no source: presets.json:power.device_power.ddr5_rdimm_w is "
                              f"null (GAP; {_U_STREAM})",
            "energy_pj_per_bit": "no source: presets.json:tiers.energy_per_bit.ddr5 is null "
                                 f"(GAP; {_U_STREAM})",
        },
    ),
    TierPreset(
        name="grace",
        description="Grace LPDDR5X (GH200), behind NVLink-C2C",
        capacity_gb=480.0,
        read_gbps=486.0,
        write_gbps=486.0,
        latency_us=0.1,
        link="nvlink_c2c",
        static_power_w=_NAN,
        energy_pj_per_bit=_NAN,
        sources={
            "capacity_gb": "presets.json:tiers.grace_lpddr5x.capacity_gb = 480 GB "
                           f"({_U_DATACRUNCH}); one GPU per Grace, so the whole memory "
                           "(a default: the OS and CPU workload need some of it)",
            "read_gbps": "presets.json:tiers.grace_lpddr5x.stream_gbs_measured = 486 GB/s "
                         f"[meas] CPU STREAM ({_U_DATACRUNCH}); peak 546 GB/s "
                         "(presets.json:tiers.grace_lpddr5x.peak_gbs, "
                         f"{_U_GRACE_BLOG}). Above the C2C link, so the link binds.",
            "write_gbps": "same as read_gbps (STREAM mixes reads and writes; no separate "
                          "write figure): presets.json:tiers.grace_lpddr5x."
                          f"stream_gbs_measured = 486 GB/s ({_U_DATACRUNCH})",
            "latency_us": "stand-in: presets.json has no Grace latency; host DDR figure "
                          "used: " + _DRAM_LAT,
            "static_power_w": _NO_POWER,
            "energy_pj_per_bit": "no source for LPDDR5X device energy (NaN); the C2C link "
                                 "itself is presets.json:tiers.energy_per_bit.nvlink_c2c = "
                                 f"1.3 pJ/bit ({_U_C2C_ENERGY}; link energy, not included)",
        },
    ),
    TierPreset(
        name="cxl",
        description="CXL Type-3 memory expander (e.g. Micron CZ120, PCIe5 x8) on the host, "
                    "reached by the GPU through its PCIe Gen5 x16 link",
        capacity_gb=256.0,
        read_gbps=36.0,
        write_gbps=36.0,
        latency_us=0.25,
        link="pcie5",
        static_power_w=_NAN,
        energy_pj_per_bit=_NAN,
        sources={
            "capacity_gb": "default, not a measurement: one 256 GB module per GPU (CZ120 "
                           "comes in 128/256 GB, presets.json:tiers.cxl_type3_expander."
                           f"module_bw_gbs_micron_cz120 note, {_U_TOMS_CZ120})",
            "read_gbps": "presets.json:tiers.cxl_type3_expander.module_bw_gbs_micron_cz120 = "
                         f"36 GB/s [vendor meas] MLC 2:1 R/W on one module ({_U_TOMS_CZ120})"
                         "; Samsung CMM-D also 36 GB/s (presets.json:tiers."
                         "cxl_type3_expander.module_bw_gbs_samsung_cmmd) and Heimdall 32 GiB/s"
                         " = 34.4 GB/s per expander (presets.json:tiers.cxl_type3_expander."
                         f"single_expander_bw_gib_heimdall, {_U_HEIMDALL}). Caveat: 36 GB/s "
                         "was measured with a read/write mix, which uses both directions of "
                         "the x8 link; a pure read stream is capped at 32 GB/s nominal "
                         "(presets.json:links.cxl2_pcie5_x8_link.nominal_gbs, "
                         f"{_U_CXL_X8}).",
            "write_gbps": "same figure as read_gbps (one mixed R/W measurement): presets.json"
                          ":tiers.cxl_type3_expander.module_bw_gbs_micron_cz120 = 36 GB/s "
                          f"({_U_TOMS_CZ120}); pure writes are capped at 32 GB/s nominal by "
                          "the x8 link.",
            "latency_us": "presets.json:tiers.cxl_type3_expander.load_latency_ns_heimdall = "
                          f"200-300 ns ({_U_HEIMDALL}); midpoint 250 ns = 0.25 us. Consistent "
                          "with presets.json:tiers.cxl_type3_expander.load_latency_ns_melody"
                          f" = 140-410 ns ({_U_MELODY}) and 2-5x local DRAM (presets.json:"
                          "tiers.cxl_type3_expander.latency_vs_local_dram_x, "
                          f"{_U_CXL_X}).",
            "static_power_w": "no source: presets.json:power.device_power.cxl_expander_card_w"
                              f" is null (GAP; {_U_TOMS_CZ120})",
            "energy_pj_per_bit": "no source: presets.json:tiers.energy_per_bit.cxl is null "
                                 "(GAP; https://arxiv.org/abs/2411.02814)",
        },
    ),
    TierPreset(
        name="nvm",
        description="Intel Optane persistent memory (DCPMM, App Direct) on the host, "
                    "behind PCIe Gen5 x16 (discontinued 2022; an NVM tier archetype)",
        capacity_gb=512.0,
        read_gbps=2 * 39.4 / GPUS_PER_NODE,
        write_gbps=2 * 13.9 / GPUS_PER_NODE,
        latency_us=(0.305 + 0.346) / 2,
        link="pcie5",
        static_power_w=_NAN,
        energy_pj_per_bit=_NAN,
        sources={
            "capacity_gb": "default, not a measurement: an assumed 4 TB of Optane per 8-GPU "
                           "node / 8 = 512 GB per GPU",
            "read_gbps": "presets.json:tiers.optane_pmem_dcpmm.six_dimm_read_gbs = 39.4 GB/s"
                         f" [paper] per socket, 6 interleaved DIMMs ({_U_OPTANE_6DIMM}) x 2 "
                         f"sockets / {GPUS_PER_NODE} GPUs = 9.85 GB/s per GPU. Per DIMM: "
                         "6.6 GB/s (presets.json:tiers.optane_pmem_dcpmm.per_dimm_read_gbs, "
                         f"{_U_OPTANE_PAPER}).",
            "write_gbps": "presets.json:tiers.optane_pmem_dcpmm.six_dimm_write_gbs = 13.9 "
                          f"GB/s ({_U_OPTANE_6DIMM}) x 2 sockets / {GPUS_PER_NODE} GPUs = "
                          "3.475 GB/s per GPU. Per DIMM: 2.3 GB/s (presets.json:tiers."
                          "optane_pmem_dcpmm.per_dimm_write_gbs).",
            "latency_us": "presets.json:tiers.optane_pmem_dcpmm.random_load_latency_ns = "
                          f"305-346 ns [paper] ({_U_OPTANE_PAPER}); midpoint 325.5 ns = "
                          "0.3255 us. Vendor idle read latency 350 ns (presets.json:tiers."
                          f"optane_pmem_dcpmm.vendor_idle_read_latency_ns, {_U_OPTANE_VENDOR})"
                          ".",
            "static_power_w": _NO_POWER,
            "energy_pj_per_bit": _NO_ENERGY,
        },
    ),
    TierPreset(
        name="ssd",
        description="Gen5 NVMe SSD (e.g. Samsung PM1743) on the host, behind PCIe Gen5 x16",
        capacity_gb=3840.0,
        read_gbps=13.0,
        write_gbps=6.6,
        latency_us=121.0,
        link="pcie5",
        static_power_w=8.0,
        energy_pj_per_bit=206.0,
        sources={
            "capacity_gb": "default, not a measurement: one 3.84 TB drive per GPU",
            "read_gbps": "presets.json:tiers.nvme_gen5_ssd.samsung_pm1743_seq_read_gbs = "
                         f"13.0 GB/s, sequential, vendor ({_U_PM1743})",
            "write_gbps": "presets.json:tiers.nvme_gen5_ssd.samsung_pm1743_seq_write_gbs = "
                          f"6.6 GB/s, sequential, vendor ({_U_PM1743})",
            "latency_us": _SSD_LAT,
            "static_power_w": _SSD_IDLE,
            "energy_pj_per_bit": "presets.json:tiers.energy_per_bit.ssd_read_derived_pm1743 "
                                 "= 206 pJ/bit [derived, confidence low] from 608 MB/s per W "
                                 f"({_U_PM1743_EFF}): 1 / 608e6 B/J = 1.64 nJ/B = 206 "
                                 "pJ/bit. It is whole-drive power over throughput, so it "
                                 "already contains the idle share (static_power_w overlaps).",
        },
    ),
    TierPreset(
        name="ssd_gen4",
        description="Gen4 NVMe SSD (e.g. Micron 9400) in a Gen4 host, behind PCIe Gen4 x16",
        capacity_gb=3840.0,
        read_gbps=7.0,
        write_gbps=7.0,
        latency_us=121.0,
        link="pcie4",
        static_power_w=8.0,
        energy_pj_per_bit=_NAN,
        sources={
            "capacity_gb": "default, not a measurement: one 3.84 TB drive per GPU",
            "read_gbps": "presets.json:tiers.nvme_gen4_ssd.micron_9400_seq_rw_gbs = 7.0 GB/s"
                         f" read and write, sequential, vendor ({_U_MICRON9400})",
            "write_gbps": "presets.json:tiers.nvme_gen4_ssd.micron_9400_seq_rw_gbs = 7.0 "
                          f"GB/s read and write, sequential, vendor ({_U_MICRON9400})",
            "latency_us": _SSD_LAT,
            "static_power_w": _SSD_IDLE,
            "energy_pj_per_bit": _NO_ENERGY,
        },
    ),
    TierPreset(
        name="remote",
        description="pooled remote memory over RDMA (Mooncake-style transfer engine), "
                    "one 400 Gb/s NIC per GPU",
        capacity_gb=1024.0,
        read_gbps=190.0 / GPUS_PER_NODE,
        write_gbps=190.0 / GPUS_PER_NODE,
        latency_us=2 * 0.83,
        link="nic_400g",
        static_power_w=_NAN,
        energy_pj_per_bit=_NAN,
        sources={
            "capacity_gb": "default, not a measurement: an assumed 1 TB per GPU of the "
                           "remote pool",
            "read_gbps": "presets.json:tiers.remote_memory_rdma.mooncake_bw_gbs_8x400g = 190 "
                         f"GB/s per 8x400G node [meas] ({_U_MOONCAKE}) / {GPUS_PER_NODE} "
                         "NICs = 23.75 GB/s per GPU. This is the end-to-end transfer-engine "
                         "rate for GB-scale transfers, ~48% of line rate (presets.json:links."
                         "mooncake_transfer_engine.bw_gbs_8x400g_roce note), so it binds "
                         "before the NIC link does.",
            "write_gbps": "same as read_gbps (RDMA transfers in either direction; no "
                          "separate figure): presets.json:tiers.remote_memory_rdma."
                          f"mooncake_bw_gbs_8x400g = 190 GB/s ({_U_MOONCAKE}) / 8",
            "latency_us": "derived: 2 x presets.json:links.rdma_latency.ib_send_lat_32B_us = "
                          f"0.83 us [meas] one-way half round trip ({_U_IB_LAT}) = 1.66 us "
                          "for the round trip of an RDMA read. Vendor RoCE order of "
                          "magnitude ~3 us (presets.json:links.rdma_latency."
                          f"rdma_ethernet_latency_us, {_U_ROCE_LAT}, confidence low). "
                          "Excludes the ~0.4 ms per-transfer software cost in presets.md §7.",
            "static_power_w": "no source (NaN): ConnectX-7 NIC power is a GAP (presets.json:"
                              f"power.device_power.connectx7_nic_w is null, {_U_OPTICS}); "
                              "the remote "
                              "server's power is not in presets.json",
            "energy_pj_per_bit": "no source for the remote memory device (NaN); the 400G "
                                 "optics alone are presets.json:tiers.energy_per_bit."
                                 "optical_400g_transceiver_derived = 22.5 pJ/bit "
                                 f"({_U_OPTICS}; link energy, not included)",
        },
    ),
]

TIER_PRESETS: dict[str, TierPreset] = {p.name: p for p in _TIERS}

for _p in _TIERS:  # every tier names a known link
    if _p.link not in LINK_PRESETS:
        raise ValueError(f"tier.{_p.name}.link = {_p.link!r}: allowed: {', '.join(LINK_PRESETS)}")
del _p


def tier(name: str) -> TierPreset:
    """The tier preset called ``name``; ValueError lists the allowed names."""
    if isinstance(name, str) and name in TIER_PRESETS:
        return TIER_PRESETS[name]
    raise ValueError(f"unknown tier {name!r}; allowed: {', '.join(TIER_PRESETS)}")


def link(name: str) -> LinkPreset:
    """The link preset called ``name``; ValueError lists the allowed names."""
    if isinstance(name, str) and name in LINK_PRESETS:
        return LINK_PRESETS[name]
    raise ValueError(f"unknown link {name!r}; allowed: {', '.join(LINK_PRESETS)}")


def _check_override(tier_name: str, field: str, value: object) -> float:
    where = f"tier.{tier_name}.{field}"
    if field not in OVERRIDABLE:
        raise ValueError(f"{where}: unknown field; allowed: {', '.join(OVERRIDABLE)}")
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{where} = {value!r}: must be a number")
    v = float(value)
    if field in ("read_gbps", "write_gbps"):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{where} = {value!r}: must be a finite number > 0 (GB/s)")
    elif not (math.isfinite(v) and v >= 0):
        unit = {"capacity_gb": "GB", "latency_us": "microseconds", "static_power_w": "W",
                "energy_pj_per_bit": "pJ/bit"}[field]
        raise ValueError(f"{where} = {value!r}: must be a finite number >= 0 ({unit})")
    return v


def to_arrays(names: Sequence[str],
              overrides: Mapping[str, Mapping[str, float]] | None = None) -> dict:
    """Arrays for the tiers ``names`` (in order, below HBM), with optional overrides.

    Args:
        names: tier preset names, top (nearest HBM) first; no duplicates.
        overrides: ``{tier name: {field: value}}`` with fields from ``OVERRIDABLE``
            (``capacity_gb``, ``read_gbps``, ``write_gbps``, ``latency_us``,
            ``static_power_w``, ``energy_pj_per_bit``); every tier named must be in
            ``names``. Bandwidths must be finite and > 0, the others finite and >= 0.

    Returns:
        A dict with float64 arrays of length ``len(names)``: ``capacity_bytes``,
        ``read_bps``, ``write_bps`` (bytes/s), ``latency_s``, ``static_power_w`` and
        ``energy_pj_per_bit`` (NaN where no source gives a figure); ``link_id`` (int32: tiers
        behind the same link share an id; ids in order of first appearance from 0);
        ``link_bps`` (float64, indexed by link id, length ``len(names)``, unused entries
        +inf); ``names`` (list of the tier names) and ``link_names`` (link name of each
        used link id).

    Raises:
        ValueError: an unknown or duplicated tier name, or a bad override (the message
            names the field as ``tier.<name>.<field>``, the value and what is allowed).
    """
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise ValueError(f"tier names must be a list of names, got {names!r}")
    names = list(names)
    presets = [tier(n) for n in names]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"tier names {dupes} appear more than once in {names}")
    overrides = {} if overrides is None else overrides
    if not isinstance(overrides, Mapping):
        raise ValueError(f"tier overrides must be a mapping of tier name -> "
                         f"{{field: value}}, got {overrides!r}")
    values = {p.name: {f: float(getattr(p, f)) for f in OVERRIDABLE} for p in presets}
    for tname, fields in overrides.items():
        if tname not in values:
            if tname in TIER_PRESETS:
                raise ValueError(f"tier.{tname}: overridden but not among the tiers used; "
                                 f"allowed: {', '.join(names) or '(none)'}")
            raise ValueError(f"tier.{tname}: unknown tier in overrides; allowed: "
                             f"{', '.join(names) or '(none)'}")
        if not isinstance(fields, Mapping):
            raise ValueError(f"tier.{tname}: overrides must be a mapping of field -> value"
                             f" (fields: {', '.join(OVERRIDABLE)}), got {fields!r}")
        for field, value in fields.items():
            values[tname][field] = _check_override(tname, field, value)

    n = len(names)
    link_names: list[str] = []
    link_id = np.zeros(n, np.int32)
    link_bps = np.full(n, np.inf, np.float64)
    for i, p in enumerate(presets):
        if p.link not in link_names:
            link_bps[len(link_names)] = link(p.link).gbps * 1e9
            link_names.append(p.link)
        link_id[i] = link_names.index(p.link)

    def col(field: str, scale: float) -> np.ndarray:
        return np.array([values[nm][field] * scale for nm in names], np.float64)

    return {
        "capacity_bytes": col("capacity_gb", 1e9),
        "read_bps": col("read_gbps", 1e9),
        "write_bps": col("write_gbps", 1e9),
        "latency_s": col("latency_us", 1e-6),
        "static_power_w": col("static_power_w", 1.0),
        "energy_pj_per_bit": col("energy_pj_per_bit", 1.0),
        "link_id": link_id,
        "link_bps": link_bps,
        "names": names,
        "link_names": link_names,
    }
