// Client for the embrace.serviceaccounts.v1 API: the generated service descriptors and messages
// (src/gen, produced by ./generate.sh from ../../proto), a helper for error details, and a token
// verifier with scope and app checks for MCP servers (src/mcp.ts).
//
//   import { createClient } from "@connectrpc/connect";
//   import { createGrpcTransport } from "@connectrpc/connect-node";
//   import { TokenIntrospection } from "@embrace/service-accounts-client";
//
//   const transport = createGrpcTransport({ baseUrl: "http://localhost:50051" });
//   const introspection = createClient(TokenIntrospection, transport);

import { ConnectError } from "@connectrpc/connect";
import { BadRequestSchema } from "./gen/google/rpc/error_details_pb.js";

export * from "./gen/embrace/serviceaccounts/v1/resources_pb.js";
export * from "./gen/embrace/serviceaccounts/v1/service_account_admin_pb.js";
export * from "./gen/embrace/serviceaccounts/v1/token_introspection_pb.js";
export * from "./gen/embrace/serviceaccounts/v1/leak_reporting_pb.js";
// google.rpc error details (BadRequest, QuotaFailure, PreconditionFailure, ...), for findDetails().
export * from "./gen/google/rpc/error_details_pb.js";
// Service-account tokens in MCP servers built with @modelcontextprotocol/sdk (optional peer).
export * from "./mcp.js";
// Decisions at the caller: Introspect answers cached while the WatchChanges feed is up.
export {
  createCachingIntrospector,
  isWellFormedServiceAccountToken,
  type CachingIntrospectRequest,
  type CachingIntrospector,
  type CachingIntrospectorOptions,
  type CachingIntrospectorStats,
  type ServiceAccountTlsOptions,
} from "./cache.js";

/** One invalid request field, as reported in a `google.rpc.BadRequest` error detail. */
export interface FieldViolation {
  /** The field's path in the request, in proto (snake_case) names, e.g. `display_name`. */
  field: string;
  /** Why the value was refused. */
  description: string;
}

/**
 * The field violations of an `INVALID_ARGUMENT` error: every `BadRequest` detail the server sent
 * (in the `grpc-status-details-bin` trailer), flattened. Empty for anything that is not a
 * `ConnectError` or carries no such detail.
 */
export function fieldViolations(err: unknown): FieldViolation[] {
  if (!(err instanceof ConnectError)) {
    return [];
  }
  return err
    .findDetails(BadRequestSchema)
    .flatMap((detail) =>
      detail.fieldViolations.map(({ field, description }) => ({ field, description })),
    );
}
