// What the logged-in key may do, mirroring studio/access.py, so pages offer only the actions the
// API would allow (the API still decides: this only keeps buttons that can only fail off the page).
import { auth } from "./api.js";
import { h } from "./dom.js";

// Roles that see the team's pages (datasets, jobs, models, …); a service key only calls models.
export const TEAM = ["admin", "user"];

export const isAdmin = () => auth.me?.role === "admin";

export const mayVisit = (roles) => !roles || roles.includes(auth.me?.role);

// The page a key lands on when it names none.
export const homeHash = () => (mayVisit(TEAM) ? "#/jobs" : "#/playground");

// An object's owner is a key id; null means it predates owners, which leaves it to admins.
export function owns(ownerKeyId) {
  if (isAdmin()) return true;
  return ownerKeyId !== null && ownerKeyId !== undefined && ownerKeyId === auth.me?.id;
}

// The model list names owners by key name (GET /api/models rows carry `owner`).
export function ownsByName(ownerName) {
  return isAdmin() || (!!ownerName && ownerName === auth.me?.name);
}

// Said where a button would be: "only its owner or an admin can cancel".
export function ownerNote(action, { id, whose = "its owner" } = {}) {
  return h("span", { class: "muted owner-note", id }, `only ${whose} or an admin can ${action}`);
}
