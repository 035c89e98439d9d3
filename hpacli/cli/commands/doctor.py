"""hpa doctor: versions, devices and plugins, to paste into a bug report."""

from __future__ import annotations

from ..options import JsonOpt


def command(as_json: JsonOpt = False) -> None:
    """Report hpacli, Python, torch (CUDA, devices), timm, zarr, numpy and plugin versions, for bug reports.

    A missing or broken torch is reported, not fatal (it is imported in a child process).
    """
    from ...doctor import environment_report
    from ..render import print_json

    report = environment_report()
    if as_json:
        print_json(report)
        return
    _print(report)


def _status(part: dict) -> str:
    if part.get("ok"):
        return part.get("version") or "ok"
    return f"[red]import failed:[/] {part.get('error')}"


def _print(r: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    from ..render import human_bytes, print_result

    head = Table.grid(padding=(0, 2))
    head.add_row("hpacli", f"{r['hpacli']['version']}  ({escape(r['hpacli']['location'])})")
    py = r["python"]
    head.add_row("python", f"{py['version']} {py['implementation']}  ({escape(py['executable'])})")
    pf = r["platform"]
    head.add_row("platform", escape(f"{pf['system']} {pf['release']} {pf['machine']} {pf['libc'] or ''}".strip()))
    t = r["torch"]
    head.add_row("torch", _status({**t, "error": escape(str(t.get("error")))}))
    if t.get("ok"):
        head.add_row("  CUDA build", str(t.get("cuda") or "none (CPU build)") + (f", cuDNN {t['cudnn']}" if t.get("cudnn") else ""))
        if t.get("hip"):
            head.add_row("  ROCm build", str(t["hip"]))
    for name in ("torchvision", "timm"):
        part = r[name]
        head.add_row(name, _status({**part, "error": escape(str(part.get("error")))}))
    print_result(head)

    pk = Table(title="installed packages", show_header=False)
    pk.add_column("package")
    pk.add_column("version")
    for name, v in r["packages"].items():
        pk.add_row(name, v or "[dim]not installed[/]")
    print_result(pk)

    dev = Table(title="devices")
    for col in ("device", "name", "memory", "notes"):
        dev.add_column(col)
    cpu = r["cpu"]
    threads = f"torch uses {t['threads']} thread(s)" if t.get("ok") else "torch not importable"
    dev.add_row("cpu", f"{cpu['usable']} usable of {cpu['count']} logical CPU(s)", "", threads)
    if t.get("ok"):
        for d in t.get("cuda_devices") or []:
            dev.add_row(f"cuda:{d['index']}", escape(d["name"]), human_bytes(d["memory_bytes"]),
                        f"compute capability {d['capability']}")
        if not t.get("cuda_devices"):
            dev.add_row("cuda", "none seen", "", escape(t.get("cuda_error") or ""))
        dev.add_row("mps", "available" if t.get("mps_available") else "not available", "", "")
    print_result(dev)

    pl = Table(title="entry-point plugins")
    for col in ("plugin", "package", "version", "status"):
        pl.add_column(col, overflow="fold")
    for p in r["plugins"]:
        pl.add_row(p["name"], p["package"], p["version"], escape(str(p["status"])))
    if not r["plugins"]:
        pl.add_row("(none)", "", "", "")
    print_result(pl)
    if r.get("environment"):
        env = Table(title="environment", show_header=False)
        env.add_column("variable")
        env.add_column("value")
        for k, v in r["environment"].items():
            env.add_row(k, escape(v))
        print_result(env)
    if r.get("probe_error"):
        from ...progress import console

        console.print(f"[yellow]warning:[/] {escape(r['probe_error'])}", highlight=False, soft_wrap=True)
