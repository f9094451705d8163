"""The .proto is the contract: generated stubs are fresh, and every service, RPC, message and field is commented."""

from __future__ import annotations

import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2

from service import gen_proto


def test_generated_stubs_are_not_stale() -> None:
    assert gen_proto.stale_files() == [], "run: python -m service.gen_proto"


def test_stale_check_notices_an_edit(tmp_path: Path) -> None:
    out = tmp_path / "_proto"
    gen_proto.generate(out)
    assert gen_proto.stale_files(out) == []
    target = out / "seqpred" / "v1" / "seqpred_pb2.py"
    target.write_text(target.read_text() + "\n# edited by hand\n")
    assert gen_proto.stale_files(out) == ["seqpred/v1/seqpred_pb2.py"]


def test_grpc_stub_imports_the_packaged_module() -> None:
    text = (gen_proto.OUT_DIR / "seqpred" / "v1" / "seqpred_pb2_grpc.py").read_text()
    assert "from service._proto.seqpred.v1 import seqpred_pb2" in text
    assert "\nfrom seqpred." not in text


def _descriptor_with_comments() -> descriptor_pb2.FileDescriptorProto:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        include = Path(protoc.__file__).resolve().parent / "_proto"
        rc = protoc.main(
            [
                "protoc",
                f"-I{gen_proto.PROTO_ROOT}",
                f"-I{include}",
                "--include_source_info",
                f"--descriptor_set_out={out}",
                *gen_proto.PROTO_FILES,
            ]
        )
        assert rc == 0
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return fds.file[0]


def test_every_rpc_message_and_field_is_commented() -> None:
    fd = _descriptor_with_comments()
    assert fd.package == "seqpred.v1"
    commented = {tuple(loc.path) for loc in fd.source_code_info.location if loc.leading_comments.strip()}
    missing = []
    for si, svc in enumerate(fd.service):
        if (6, si) not in commented:
            missing.append(svc.name)
        for mi, m in enumerate(svc.method):
            if (6, si, 2, mi) not in commented:
                missing.append(f"{svc.name}.{m.name}")
    for mi, msg in enumerate(fd.message_type):
        if (4, mi) not in commented:
            missing.append(msg.name)
        for fi, f in enumerate(msg.field):
            if (4, mi, 2, fi) not in commented:
                missing.append(f"{msg.name}.{f.name}")
    assert missing == []
    assert [m.name for m in fd.service[0].method] == [
        "Stream",
        "Predict",
        "Score",
        "CloseSession",
        "GetSession",
        "GetModelInfo",
    ]
