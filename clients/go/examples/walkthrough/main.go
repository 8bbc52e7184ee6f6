// Command walkthrough runs the README's grpcurl walkthrough with Go code generated from proto/
// by protoc-gen-go and protoc-gen-go-grpc, and checks every answer.
//
// It creates a service account with access to the app checkout-ios, issues it a token with the
// scopes mcp:tools:call and mcp:read, introspects the token (allowed in org acme; refused with
// ORG_MISMATCH in org globex), revokes it and introspects it again (inactive: REVOKED). It exits
// non-zero with a message on the first unexpected answer, so it doubles as a test.
//
// Environment:
//
//	SERVICE_ACCOUNTS_ADDR  host:port of the server, plaintext (default localhost:50051)
//	ADMIN_JWT              org-admin JWT for org acme (required), for example:
//	  export ADMIN_JWT=$(cargo run -q -- admin-token --org-id acme --user-id alice)
//
// See ../../README.md for how to generate the serviceaccountspb package and build this.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	pb "embrace.io/go/serviceaccounts/apiv1/serviceaccountspb"
)

const (
	timeout  = 10 * time.Second
	org      = "acme"
	otherOrg = "globex"
	app      = "checkout-ios"
)

var scopes = []string{"mcp:tools:call", "mcp:read"}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "walkthrough failed:", err)
		os.Exit(1)
	}
	fmt.Println("walkthrough: every answer as expected")
}

func run() error {
	addr := os.Getenv("SERVICE_ACCOUNTS_ADDR")
	if addr == "" {
		addr = "localhost:50051"
	}
	jwt := os.Getenv("ADMIN_JWT")
	if jwt == "" {
		return fmt.Errorf("ADMIN_JWT is not set (an org-admin JWT for org %q)", org)
	}

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// Plaintext, as `cargo run` serves; use grpc.WithTransportCredentials for TLS.
	conn, err := grpc.DialContext(ctx, addr, grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.Close()

	admin := pb.NewServiceAccountAdminClient(conn)
	introspection := pb.NewTokenIntrospectionClient(conn)
	// Every admin call carries the org admin's JWT; TokenIntrospection takes none.
	adminCtx := func() (context.Context, context.CancelFunc) {
		c, cancel := context.WithTimeout(context.Background(), timeout)
		return metadata.AppendToOutgoingContext(c, "authorization", "Bearer "+jwt), cancel
	}
	plainCtx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), timeout)
	}

	// Display names are unique per org: one fresh name per run.
	suffix := make([]byte, 4)
	if _, err := rand.Read(suffix); err != nil {
		return err
	}
	run := hex.EncodeToString(suffix)

	fmt.Println("== CreateServiceAccount")
	c, done := adminCtx()
	created, err := admin.CreateServiceAccount(c, &pb.CreateServiceAccountRequest{
		DisplayName: "Go client " + run,
		AppAccess:   &pb.AppAccess{AppIds: []string{app}},
	})
	done()
	if err != nil {
		return fmt.Errorf("CreateServiceAccount: %w", err)
	}
	account := created.GetServiceAccount()
	fmt.Printf("   id=%s name=%q org=%s\n", account.GetServiceAccountId(), account.GetDisplayName(), account.GetOrgId())
	if account.GetServiceAccountId() == "" || account.GetOrgId() != org {
		return fmt.Errorf("unexpected account %v", account)
	}
	if ids := account.GetAppAccess().GetAppIds(); len(ids) != 1 || ids[0] != app {
		return fmt.Errorf("app access is %v, want [%s]", ids, app)
	}

	fmt.Println("== CreateToken")
	c, done = adminCtx()
	issued, err := admin.CreateToken(c, &pb.CreateTokenRequest{
		ServiceAccountId: account.GetServiceAccountId(),
		DisplayName:      "GitHub Actions",
		Scopes:           scopes,
	})
	done()
	if err != nil {
		return fmt.Errorf("CreateToken: %w", err)
	}
	secret := issued.GetSecret() // shown this once; keep it out of logs (only its hint is printed)
	token := issued.GetToken()
	fmt.Printf("   token_id=%s hint=%s scopes=%v\n", token.GetTokenId(), token.GetHint(), token.GetScopes())
	if !strings.HasPrefix(secret, "emb_sa_") {
		return fmt.Errorf("the secret does not look like a service-account token")
	}
	if !sameSet(token.GetScopes(), scopes) {
		return fmt.Errorf("the token's scopes are %v, want %v", token.GetScopes(), scopes)
	}

	fmt.Printf("== Introspect in org %q, app %q, requiring mcp:read\n", org, app)
	c, done = plainCtx()
	answer, err := introspection.Introspect(c, &pb.IntrospectRequest{
		Token: secret, OrgId: org, AppId: app, RequiredScopes: []string{"mcp:read"},
	})
	done()
	if err != nil {
		return fmt.Errorf("Introspect: %w", err)
	}
	fmt.Printf("   active=%v allowed=%v account=%q scopes=%v\n",
		answer.GetActive(), answer.GetAllowed(), answer.GetServiceAccountDisplayName(), answer.GetScopes())
	if !answer.GetActive() || !answer.GetAllowed() {
		return fmt.Errorf("expected active and allowed, got %v", answer)
	}
	if answer.GetServiceAccountId() != account.GetServiceAccountId() || answer.GetTokenId() != token.GetTokenId() {
		return fmt.Errorf("introspection names account %q token %q", answer.GetServiceAccountId(), answer.GetTokenId())
	}

	fmt.Printf("== Introspect in org %q (another org's app of the same name)\n", otherOrg)
	c, done = plainCtx()
	answer, err = introspection.Introspect(c, &pb.IntrospectRequest{Token: secret, OrgId: otherOrg, AppId: app})
	done()
	if err != nil {
		return fmt.Errorf("Introspect: %w", err)
	}
	fmt.Printf("   active=%v allowed=%v denial_reason=%s\n", answer.GetActive(), answer.GetAllowed(), answer.GetDenialReason())
	if !answer.GetActive() || answer.GetAllowed() || answer.GetDenialReason() != pb.DenialReason_DENIAL_REASON_ORG_MISMATCH {
		return fmt.Errorf("expected active, not allowed, DENIAL_REASON_ORG_MISMATCH; got %v", answer)
	}

	fmt.Println("== RevokeToken")
	c, done = adminCtx()
	revoked, err := admin.RevokeToken(c, &pb.RevokeTokenRequest{
		ServiceAccountId: account.GetServiceAccountId(), TokenId: token.GetTokenId(),
	})
	done()
	if err != nil {
		return fmt.Errorf("RevokeToken: %w", err)
	}
	fmt.Printf("   revoke_time=%s revoked_by=%s\n",
		revoked.GetToken().GetRevokeTime().AsTime().Format(time.RFC3339Nano), revoked.GetToken().GetRevokedBy())
	if revoked.GetToken().GetRevokeTime() == nil {
		return fmt.Errorf("the revoked token has no revoke_time")
	}

	fmt.Println("== Introspect the revoked token")
	c, done = plainCtx()
	answer, err = introspection.Introspect(c, &pb.IntrospectRequest{Token: secret})
	done()
	if err != nil {
		return fmt.Errorf("Introspect: %w", err)
	}
	fmt.Printf("   active=%v inactive_reason=%s denial_reason=%s\n",
		answer.GetActive(), answer.GetInactiveReason(), answer.GetDenialReason())
	if answer.GetActive() || answer.GetAllowed() ||
		answer.GetInactiveReason() != pb.InactiveReason_INACTIVE_REASON_REVOKED ||
		answer.GetDenialReason() != pb.DenialReason_DENIAL_REASON_TOKEN_INACTIVE {
		return fmt.Errorf("expected inactive with INACTIVE_REASON_REVOKED and DENIAL_REASON_TOKEN_INACTIVE; got %v", answer)
	}
	return nil
}

func sameSet(a, b []string) bool {
	x := append([]string(nil), a...)
	y := append([]string(nil), b...)
	sort.Strings(x)
	sort.Strings(y)
	return strings.Join(x, "\n") == strings.Join(y, "\n")
}
