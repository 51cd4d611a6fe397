"""``hndsr serve predictor|transformer|local|worker|ingress`` and ``hndsr client sr``: thin commands over
the ``serving`` package (the KServe adapters), whose servers are imported only when one of them runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from serving.ingress_cli import register as register_ingress
from serving.jobs.cli import register as register_worker

serve_app = typer.Typer(help="Run the KServe predictor or transformer locally.", no_args_is_help=True)
client_app = typer.Typer(help="Call a running HNDSR inference service.", no_args_is_help=True)


# In a cluster KServe appends its own spelling of some options (--model_name, --predictor_host,
# --http_port) to the container's args; accept both spellings.
KSERVE_OPTION_SPELLING: dict[str, Any] = {"token_normalize_func": lambda token: token.replace("_", "-")}


# The options both servers take, spelled once.
HttpPort = Annotated[int, typer.Option(help="REST port.")]
GrpcPort = Annotated[int | None, typer.Option(help="gRPC port (default: gRPC off).")]
AdminTokenFile = Annotated[
    Path | None,
    typer.Option(
        envvar="HNDSR_ADMIN_TOKEN_FILE",
        help="File holding the admin token; enables /v2/repository/... (default: off).",
    ),
]


def _isolate_kserve_argv() -> None:
    # kserve.model_server parses sys.argv when imported; our options are not its options.
    sys.argv = sys.argv[:1]


def register(app: typer.Typer, *, friendly_errors: Callable[[Any], Any]) -> None:
    app.add_typer(serve_app, name="serve")
    app.add_typer(client_app, name="client")
    register_worker(serve_app, friendly_errors=friendly_errors)  # serve worker: asynchronous jobs
    register_ingress(serve_app, friendly_errors=friendly_errors)  # serve ingress: nginx in front

    @serve_app.command("predictor", context_settings=KSERVE_OPTION_SPELLING)
    @friendly_errors
    def serve_predictor(
        http_port: HttpPort = 8081,
        grpc_port: GrpcPort = None,
        model_name: Annotated[str, typer.Option(help="Model name on the endpoint path.")] = "hndsr",
        storage_uri: Annotated[
            str,
            typer.Option(help="release | DIR | file:///DIR | s3://bucket/prefix | models:/hndsr@champion"),
        ] = "release",
        device: Annotated[
            str | None, typer.Option(help="cpu, cuda, cuda:1 (default: cuda if present).")
        ] = None,
        fp16: Annotated[
            bool | None, typer.Option("--fp16/--fp32", help="fp16 autocast (default: on CUDA).")
        ] = None,
        max_concurrency: Annotated[int, typer.Option(help="Concurrent inferences.")] = 4,
        max_queue: Annotated[int, typer.Option(help="Inferences waiting; more -> 503.")] = 20,
        compute_batch: Annotated[
            int | None, typer.Option(help="Tiles per model call (default: 4 on CUDA, 1 on CPU).")
        ] = None,
        breaker_threshold: Annotated[
            int, typer.Option(help="Consecutive failures that open the breaker.")
        ] = 3,
        breaker_reset_s: Annotated[
            float, typer.Option(help="Seconds OPEN before a blind trial, if the self-test has not closed it.")
        ] = 30.0,
        breaker_probe_s: Annotated[
            float, typer.Option(help="While OPEN, re-run the warm-up self-test this often; passed: CLOSED.")
        ] = 1.0,
        expected_sha256: Annotated[str | None, typer.Option(help="Refuse any other checkpoint.")] = None,
        cache_dir: Annotated[Path | None, typer.Option(help="Where s3:// and models:/ downloads go.")] = None,
        max_body_mb: Annotated[float, typer.Option(help="Request body limit in MB (413 above).")] = 64.0,
        max_canvas_mp: Annotated[
            float, typer.Option(help="Largest canvas of a tile batch, megapixels (413 above).")
        ] = 72.0,
        noise_cache_mb: Annotated[
            float, typer.Option(help="Memory for cached diffusion noise fields, MB (LRU).")
        ] = 256.0,
        admin_token_file: AdminTokenFile = None,
    ) -> None:
        """The predictor: batches of tiles on the model (KServe ModelServer, REST v1 + v2)."""
        _isolate_kserve_argv()
        from serving.model_server import read_admin_token, run_predictor
        from serving.predictor import PredictorSettings

        settings = PredictorSettings(
            storage_uri=storage_uri,
            device=device,
            half=fp16,
            max_concurrency=max_concurrency,
            max_queue=max_queue,
            compute_batch=compute_batch,
            breaker_threshold=breaker_threshold,
            breaker_reset_s=breaker_reset_s,
            breaker_probe_s=breaker_probe_s,
            expected_sha256=expected_sha256,
            cache_dir=str(cache_dir) if cache_dir else None,
            max_body_bytes=int(max_body_mb * 2**20),
            max_canvas_pixels=int(max_canvas_mp * 1e6),
            noise_cache_bytes=int(noise_cache_mb * 2**20),
        )
        run_predictor(
            model_name=model_name,
            http_port=http_port,
            grpc_port=grpc_port,
            settings=settings,
            admin_token=read_admin_token(admin_token_file),
        )

    @serve_app.command("transformer", context_settings=KSERVE_OPTION_SPELLING)
    @friendly_errors
    def serve_transformer(
        predictor_host: Annotated[str, typer.Option(help="host:port of the predictor's REST endpoint.")],
        http_port: HttpPort = 8080,
        grpc_port: GrpcPort = None,
        model_name: Annotated[str, typer.Option(help="Model name (the same on the predictor).")] = "hndsr",
        predictor_protocol: Annotated[str, typer.Option(help="v1 | v2 for the hop to the predictor.")] = "v2",
        encoding: Annotated[
            str, typer.Option(help="v2 tile encoding: b64 | fp32_binary | fp32_json.")
        ] = "b64",
        tile: Annotated[
            int, typer.Option(help="Largest tile, output px (shrunk per image to waste less).")
        ] = 1024,
        batch_size: Annotated[int, typer.Option(help="Tiles per predictor request.")] = 4,
        inflight_batches: Annotated[int, typer.Option(help="Predictor requests in flight per image.")] = 2,
        max_sync_tiles: Annotated[int, typer.Option(help="More tiles -> 413 (asynchronous path).")] = 64,
        max_body_mb: Annotated[float, typer.Option(help="Request body limit in MB.")] = 20.0,
        max_input_pixels: Annotated[int, typer.Option(help="Input pixel limit (decompression bombs).")] = 2048
        * 2048,
        rate_limit_rps: Annotated[float, typer.Option(help="Requests/s per client key (0: off).")] = 10.0,
        rate_limit_burst: Annotated[int, typer.Option(help="Token-bucket burst per client key.")] = 20,
        api_keys_file: Annotated[
            Path | None,
            typer.Option(
                envvar="HNDSR_API_KEYS_FILE",
                help="Issued API keys ('<key> <client name>' lines or a JSON object): X-Api-Key names the "
                "rate-limit bucket, an unknown key is 401. Without it the peer address does.",
            ),
        ] = None,
        client_ip_header: Annotated[
            str | None,
            typer.Option(
                help="Client-address header of a proxy in front (e.g. X-Forwarded-For), believed "
                "only from --trusted-proxies."
            ),
        ] = None,
        trusted_proxies: Annotated[
            str, typer.Option(help="Comma-separated addresses/CIDRs whose --client-ip-header is believed.")
        ] = "127.0.0.1/32,::1/128",
        max_concurrency: Annotated[int, typer.Option(help="Requests processed at once.")] = 4,
        max_queue: Annotated[int, typer.Option(help="Requests waiting; more -> 503.")] = 20,
        max_latency_factor: Annotated[
            float,
            typer.Option(
                help="Refuse (503) a request expected to take over this many times its unloaded latency "
                "at the measured drain rate, calibrated to the 90th percentile of how far recent "
                "requests overran their prediction (0: queue length only)."
            ),
        ] = 2.5,
        breaker_threshold: Annotated[
            int, typer.Option(help="Consecutive predictor failures that open it.")
        ] = 3,
        breaker_reset_s: Annotated[
            float, typer.Option(help="Seconds OPEN before a blind trial, if the probe has not closed it.")
        ] = 30.0,
        breaker_probe_s: Annotated[
            float, typer.Option(help="While OPEN, probe the predictor's readiness this often; ready: CLOSED.")
        ] = 1.0,
        timeout_s: Annotated[float, typer.Option(help="Predictor request timeout.")] = 600.0,
        request_stats: Annotated[
            str | None,
            typer.Option(help="DIR | s3://bucket/prefix: record per-request image statistics (drift)."),
        ] = None,
        redis_url: Annotated[
            str | None,
            typer.Option(
                envvar="HNDSR_REDIS_URL",
                help="Redis of the job queue: requests over --max-sync-tiles become jobs (202 + id).",
            ),
        ] = None,
        jobs_s3_prefix: Annotated[
            str | None,
            typer.Option(envvar="HNDSR_JOBS_S3_PREFIX", help="s3://bucket/prefix for job inputs over 4 MB."),
        ] = None,
        jobs_max_attempts: Annotated[int, typer.Option(help="Attempts before the dead-letter queue.")] = 3,
        admin_token_file: AdminTokenFile = None,
    ) -> None:
        """The transformer: validation, admission, tiling, stitching, encoding; forwards to the predictor."""
        _isolate_kserve_argv()
        from serving.jobs.cli import job_config
        from serving.model_server import read_admin_token, run_transformer
        from serving.transformer_settings import TransformerSettings
        from serving.validation import Limits

        if predictor_protocol not in ("v1", "v2"):
            raise typer.BadParameter("--predictor-protocol must be v1 or v2")
        settings = TransformerSettings(
            predictor_host=predictor_host,
            predictor_protocol=predictor_protocol,
            predictor_model=model_name,
            encoding=encoding,
            timeout_s=timeout_s,
            limits=Limits(max_body_bytes=int(max_body_mb * 2**20), max_input_pixels=max_input_pixels),
            max_sync_tiles=max_sync_tiles,
            tile=tile,
            batch_size=batch_size,
            inflight_batches=inflight_batches,
            rate_limit_rps=rate_limit_rps,
            rate_limit_burst=rate_limit_burst,
            api_keys_file=str(api_keys_file) if api_keys_file else None,
            client_ip_header=client_ip_header,
            trusted_proxies=trusted_proxies,
            max_concurrency=max_concurrency,
            max_queue=max_queue,
            max_latency_factor=max_latency_factor,
            breaker_threshold=breaker_threshold,
            breaker_reset_s=breaker_reset_s,
            breaker_probe_s=breaker_probe_s,
            request_stats=request_stats,
            job_queue=job_config(redis_url, s3_prefix=jobs_s3_prefix, max_attempts=jobs_max_attempts)
            if redis_url
            else None,
        )
        run_transformer(
            model_name=model_name,
            http_port=http_port,
            grpc_port=grpc_port,
            settings=settings,
            admin_token=read_admin_token(admin_token_file),
        )

    @serve_app.command("local")
    @friendly_errors
    def serve_local(
        storage_uri: Annotated[
            str | None,
            typer.Option(help="Checkpoint (default: MLflow champion if MLFLOW_TRACKING_URI, else release)."),
        ] = None,
        port: Annotated[int, typer.Option(help="Transformer (public) port.")] = 8080,
        predictor_port: Annotated[int, typer.Option(help="Predictor port.")] = 8081,
        sample: Annotated[Path, typer.Option(help="Image used in the printed examples.")] = Path(
            "outputs/serve_sample.png"
        ),
        tls: Annotated[
            bool,
            typer.Option(help="nginx in front: TLS (self-signed), rate limit, buffering (make serve-tls)."),
        ] = False,
        https_port: Annotated[int, typer.Option(help="With --tls: the HTTPS port.")] = 8443,
        http_port: Annotated[int, typer.Option(help="With --tls: plain HTTP, redirected.")] = 8000,
        smoke: Annotated[
            Path | None,
            typer.Option(help="Upscale --sample x4 once through the servers into this file, then stop."),
        ] = None,
    ) -> None:
        """Predictor + transformer on this machine, with a ready-to-paste curl example (make serve)."""
        from serving.ingress import IngressConfig
        from serving.local_stack import run_local

        ingress = (
            IngressConfig(f"127.0.0.1:{port}", https_port=https_port, http_port=http_port) if tls else None
        )
        run_local(
            storage_uri=storage_uri,
            transformer_port=port,
            predictor_port=predictor_port,
            sample=sample,
            ingress=ingress,
            smoke=(sample, smoke) if smoke is not None else None,
        )

    @client_app.command("sr")
    @friendly_errors
    def client_sr(
        input: Annotated[Path, typer.Argument(help="LR image: PNG, JPEG, TIFF or GeoTIFF.")],
        output: Annotated[Path, typer.Argument(help="Output: .png, or .tif/.tiff for GeoTIFF.")],
        url: Annotated[str, typer.Option(help="Base URL of the transformer.")] = "http://127.0.0.1:8080",
        scale: Annotated[float, typer.Option(help="Upscaling factor in [2, 4].")] = 4.0,
        steps: Annotated[int | None, typer.Option(help="DDIM steps; 0 = deterministic path.")] = None,
        seed: Annotated[int, typer.Option(help="Seed of the diffusion noise.")] = 0,
        strength: Annotated[float | None, typer.Option(help="Diffusion strength in (0, 1].")] = None,
        samples: Annotated[
            int, typer.Option(help="K in [2, 16]: mean of K draws + per-pixel uncertainty (1 = none).")
        ] = 1,
        cog: Annotated[
            bool, typer.Option("--cog/--no-cog", help="GeoTIFF as a Cloud-Optimized GeoTIFF (or plain).")
        ] = True,
        protocol: Annotated[str, typer.Option(help="v1 | v2")] = "v1",
        model_name: Annotated[str, typer.Option(help="Model name.")] = "hndsr",
        api_key: Annotated[
            str | None, typer.Option(envvar="HNDSR_API_KEY", help="Client key (rate limits).")
        ] = None,
        timeout_s: Annotated[float, typer.Option(help="Request timeout.")] = 600.0,
    ) -> None:
        """Super-resolve one image through a running service."""
        import logging

        from serving.client import SRClient

        logging.getLogger("httpx").setLevel(logging.WARNING)

        with SRClient(
            url, model=model_name, protocol=protocol, api_key=api_key, timeout_s=timeout_s
        ) as client:
            options = {"scale": scale, "steps": steps, "seed": seed, "strength": strength}
            result = client.upscale_file(input, output, samples=samples, cog=cog, **options)
        meta = result.meta
        timings = meta.get("timings_ms", {})
        typer.echo(
            f"wrote {output} ({meta.get('width')}x{meta.get('height')}, x{scale:g}, "
            f"steps={meta.get('steps')}, "
            f"model {meta.get('model_version')}, {meta.get('tiles')} tiles, {timings.get('total', 0):.0f} ms)"
        )
        if result.item_path is not None:
            typer.echo(f"wrote {result.item_path} (STAC Item)")
        if result.uncertainty is not None:
            from hndsr.uncertainty_output import uncertainty_path

            typer.echo(f"wrote {uncertainty_path(output)} (per-pixel std of {samples} draws, 65535 = 1.0)")
