// Talk to the monitor's API: the read token, JSON fetches and the event-stream URL.

const TOKEN_KEY = "pimon.readToken";

export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  try {
    return localStorage.getItem(TOKEN_KEY);
  } catch {
    return null; // storage disabled: the prompt will ask again next time
  }
}

function storeToken(value) {
  try {
    if (value) localStorage.setItem(TOKEN_KEY, value);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    /* storage disabled */
  }
}

let asking = null;

// Ask for the read token once, however many requests were refused at the same time.
export function askToken(rejected) {
  if (asking) return asking;
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  const why = document.getElementById("token-why");
  if (rejected) why.textContent = "The monitor refused the stored token. Enter the current read token.";
  input.value = "";
  asking = new Promise((resolve) => {
    const done = () => {
      const value = input.value.trim();
      if (!value) {
        dialog.showModal(); // Escape closed it; a token is still needed
        return;
      }
      dialog.removeEventListener("close", done);
      storeToken(value);
      asking = null;
      resolve(value);
    };
    dialog.addEventListener("close", done);
  });
  dialog.showModal();
  input.focus();
  return asking;
}

export async function api(path, { signal } = {}) {
  for (let attempt = 0; attempt < 5; attempt += 1) {
    const headers = { Accept: "application/json" };
    const current = token();
    if (current) headers.Authorization = `Bearer ${current}`;
    const resp = await fetch(path, { headers, signal, cache: "no-store" });
    if (resp.status === 401) {
      storeToken(null);
      await askToken(Boolean(current));
      continue;
    }
    if (!resp.ok) {
      let message = `${resp.status} ${resp.statusText}`;
      try {
        message = (await resp.json()).error || message;
      } catch {
        /* not the JSON error shape */
      }
      throw new HttpError(resp.status, message);
    }
    return resp.json();
  }
  throw new HttpError(401, "the monitor keeps refusing the read token");
}

// EventSource cannot send headers, so the token rides in the query string.
export function eventsUrl() {
  const current = token();
  return current ? `/v1/events?token=${encodeURIComponent(current)}` : "/v1/events";
}
