"""The benchmark files ckl imports, where they come from, and `ckl data get`.

Each source names the files of one benchmark at their public origin, pinned to a commit,
with the SHA-256 of the version ckl's importers and docs were measured on. `get` fetches
them into a new directory (from the origin, or from a local mirror: a directory holding
files of the same names), checks each checksum, and writes nothing unless every file
arrived; `--sample` copies the small sample shipped inside the package instead (no
network: what the tests, the examples and a first try use).

Downloads use the standard library's `urllib` (one HTTPS GET per file, streamed to a
temporary file): a dataset library would add a dependency for three plain files.

Samples shipped (ckl/data/samples/, licences in ckl/data/samples/README.md): the first
300 CounterFact and zsRE records of the files below, and 15 of KnowUnDo privacy's 55
people with all their records. The Pile extraction targets are not shipped (their
repository states no licence and the texts come from documents under many licences); get
them with `ckl data get pile`.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ckl.core.files import file_sha256
from ckl.core.checks import did_you_mean
from ckl.core.errors import InputError

_GITHUB = "https://raw.githubusercontent.com"
_SPREAD = f"{_GITHUB}/Jometeorie/KnowledgeSpread/51d7402617c2e52bde0dc11b76e400c3725a181a/data"


@dataclass(frozen=True)
class File:
    name: str  # where it lands under --out (and its name in a mirror)
    url: str
    sha256: str | None  # of the version ckl was measured on; None: not checked


@dataclass(frozen=True)
class Source:
    name: str
    what: str
    files: tuple[File, ...]
    licence: str
    sample: tuple[str, ...]  # paths under ckl/data/samples (empty: none shipped)
    then: str  # the import command that reads what `get` wrote ({out}: the directory, {first}: its first file)


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("counterfact", "CounterFact in EasyEdit's counterfact-edit form (Meng et al. 2022), 10,000 and the first 1,000 records",
           (File("counterfact-edit-1k.json", f"{_SPREAD}/counterfact/counterfact-edit-1k.json", "a76ca148f3d7214d2939aaa023da12f400770898de1d6bb45ba8b04cf2d88db7"),
            File("counterfact-edit.json", f"{_SPREAD}/counterfact/counterfact-edit.json", "bfe31a7081932739406e282bb625d74222549c3386c15b1df3dfbc3978c69eec")),
           "CounterFact: MIT (ROME, Kevin Meng 2022); the form: Jometeorie/KnowledgeSpread @ 51d7402 (no licence stated)",
           ("counterfact-edit-300.json",), "ckl import counterfact {first} --out STREAM"),
    Source("zsre", "zsRE in MEND's format (Levy et al. 2017; Mitchell et al. 2022), 1,000 training records",
           (File("zsre_mend_train-1k.json", f"{_SPREAD}/zsre/zsre_mend_train-1k.json", "e62596101d8ed551889c26c0d2a5277f92eaef3b14416d8eaee39b04a244ab60"),),
           "MEND's zsRE splits: MIT (Eric Mitchell 2022); the file: Jometeorie/KnowledgeSpread @ 51d7402 (no licence stated)",
           ("zsre_mend_train-300.json",), "ckl import zsre {first} --out STREAM"),
    Source("knowundo", "KnowUnDo privacy (Tian et al. 2024): 1,059 questions about 55 fictitious people, unlearn/retention splits",
           tuple(File(f"{n}.json", f"{_GITHUB}/zjunlp/unlearn/{commit}/dataset/KnowUnDo/privacy/{n}.json", sha) for n, commit, sha in (
               ("full", "6c9bb4aee17e866c82ab0102d707b92dec9a3446", "add953972221b08032967805a2c7925437a0810105f30754b7dc84abdd768b29"),
               ("unlearn_train", "3c3685d715401d37e5d80d532b2b441c3577a2d0", "029df8350816bd4ba6726fb0a6482dc8c2ed6136b9e347ebd1f2ae9b7b3240d4"),
               ("unlearn_val", "3c3685d715401d37e5d80d532b2b441c3577a2d0", "76d2010bd3e0fb3f66b6fcb89d63ee0095d18e0fc2777dc9098f28a40031a84a"),
               ("retention_train", "3c3685d715401d37e5d80d532b2b441c3577a2d0", "73660881caa9cab9299cd0abe8085ea37b20695ba60e26a8869c25a8b8e72bae"),
               ("retention_val", "3c3685d715401d37e5d80d532b2b441c3577a2d0", "49120e845315d4412d06a9b50de7ba99e5073ef97d96c600f8eab5ff3a166b24"))),
           "MIT (zjunlp/unlearn)", tuple(f"knowundo_privacy/{n}.json" for n in ("full", "unlearn_train", "unlearn_val", "retention_train", "retention_val")),
           "ckl import knowundo {out} --out STREAM"),
    Source("pile", "The Pile extraction targets used by Jang et al. 2023 (Knowledge Unlearning): 128 sequences",
           (File("lm_extraction_128_0.csv", f"{_GITHUB}/joeljang/knowledge-unlearning/c3a0641b9d86d4ca3185d76c9f0ab500bbfb49ce/data/main/lm_extraction_128_0.csv",
                 "a91cf063212d4975e2b3ddca0bc0a6026f26a4de024307586e763e69f5a6516a"),),
           "no licence stated (joeljang/knowledge-unlearning); the texts are the Pile's documents, under their own licences: not shipped",
           (), "ckl import pile {first} --out STREAM"),
    Source("tofu-refusals", "TOFU's 100 \"I don't know\" refusals (Maini et al. 2024), the idk objective's targets",
           (File("idontknow.jsonl", f"{_GITHUB}/locuslab/tofu/8c49eee7da2b96b2b718c41c66f4e21331c89189/data/idontknow.jsonl", "eb9a1e32a6f4112088306e1a65d297240f75513dd5223b2acb326454675fd605"),),
           "MIT (locuslab/tofu)", (), "(shipped: ckl/data/formats/tofu_idontknow.jsonl is the default of idk.file)"),
)}


def sample_path(relative: str) -> Path:
    return Path(str(resources.files("ckl.data") / "samples" / relative))


def _download(url: str, dest: Path, timeout: float, sample: bool) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:  # noqa: S310 (https URLs above)
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise InputError(url, None, None, (
            f"could not download ({reason}). No network here? Download the file yourself and pass "
            "--from DIR (a directory holding it under the same name)" + (", or use --sample for the small sample ckl ships" if sample else ""))) from None


def get(name: str, out: str | Path, mirror: str | Path | None = None, verify: bool = True, sample: bool = False,
        timeout: float = 60.0, say=print) -> list[Path]:
    """Fetch source `name`'s files (or its shipped sample) into the new directory `out`.

    Raises:
        InputError: unknown source, `out` not new or empty, a file missing from the
            mirror, a failed download, or a checksum that differs; nothing is left in `out`.
    """
    if name not in SOURCES:
        raise InputError("NAME", None, None, f"unknown data source {name!r}{did_you_mean(name, SOURCES)} (known: {', '.join(SOURCES)})")
    source = SOURCES[name]
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(str(out), None, None, "--out must be a new or empty directory")
    if sample and not source.sample:
        raise InputError("--sample", None, None, f"ckl ships no sample of {name!r} ({source.licence}); get it without --sample")
    mirror_dir = Path(mirror) if mirror is not None else None
    if mirror_dir is not None and not mirror_dir.is_dir():
        raise InputError(str(mirror_dir), None, None, "--from must be a directory holding the files under their names")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        written = []
        if sample:
            for relative in source.sample:
                dest = staging / Path(relative).name
                shutil.copyfile(sample_path(relative), dest)
                written.append(dest.name)
        else:
            for f in source.files:
                dest = staging / f.name
                if mirror_dir is not None:
                    if not (mirror_dir / f.name).is_file():
                        raise InputError(str(mirror_dir / f.name), None, None, f"not found in --from (expected {f.name}, from {f.url})")
                    shutil.copyfile(mirror_dir / f.name, dest)
                else:
                    say(f"downloading {f.url}")
                    _download(f.url, dest, timeout, bool(source.sample))
                found = file_sha256(dest)
                if verify and f.sha256 and found != f.sha256:
                    raise InputError(str(mirror_dir / f.name if mirror_dir else f.url), None, None, (
                        f"SHA-256 {found} differs from the version ckl was measured on ({f.sha256}); "
                        "pass --no-verify to use it anyway"))
                written.append(f.name)
        out.mkdir(exist_ok=True)
        for n in written:
            (staging / n).replace(out / n)
        return [out / n for n in written]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
