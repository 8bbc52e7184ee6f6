"""A protoc plugin that runs grpcio-tools' built-in grpc_python generator.

grpcio-tools ships the gRPC Python generator inside its bundled protoc, not as a
protoc-gen-grpc_python executable, and buf only proxies protoc's own built-in
generators (python, pyi, ...). This script bridges the two: it reads the
CodeGeneratorRequest buf sends, hands the same descriptors to
`python -m grpc_tools.protoc --grpc_python_out`, and returns what it wrote.
Run it with the Python of the venv that has the pinned grpcio-tools.
"""

import os
import subprocess
import sys
import tempfile

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2


def main() -> None:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    response = plugin_pb2.CodeGeneratorResponse()
    with tempfile.TemporaryDirectory() as tmp:
        descriptors = os.path.join(tmp, "descriptors.binpb")
        with open(descriptors, "wb") as f:
            f.write(descriptor_pb2.FileDescriptorSet(file=request.proto_file).SerializeToString())
        out = os.path.join(tmp, "out")
        os.mkdir(out)
        args = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--descriptor_set_in={descriptors}",
            f"--grpc_python_out={out}",
        ]
        if request.parameter:
            args.append(f"--grpc_python_opt={request.parameter}")
        args.extend(request.file_to_generate)
        result = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            message = (result.stderr or result.stdout).strip()
            response.error = message or f"protoc exited with status {result.returncode}"
        else:
            for root, _dirs, files in os.walk(out):
                for name in files:
                    path = os.path.join(root, name)
                    with open(path, encoding="utf-8") as f:
                        response.file.add(
                            name=os.path.relpath(path, out).replace(os.sep, "/"),
                            content=f.read(),
                        )
    sys.stdout.buffer.write(response.SerializeToString())


if __name__ == "__main__":
    main()
