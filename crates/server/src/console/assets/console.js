// Gatehouse console: the little the pages need beyond HTML.
// - A table body with data-live="URL" is refreshed from URL (its rows only) every 3 seconds.
// - An element with data-refresh="N" reloads the page every N seconds while nothing on it is
//   being edited.
'use strict';

function refreshRows(body) {
  const url = body.dataset.live;
  const status = document.getElementById('live-status');
  let failures = 0;
  const tick = async () => {
    try {
      const response = await fetch(url, { credentials: 'same-origin', headers: { Accept: 'text/html' } });
      if (response.redirected || response.status === 401) {
        // Signed out meanwhile: let the next navigation go to the sign-in page.
        if (status) status.textContent = 'Signed out; reload the page to sign in again.';
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const html = await response.text();
      if (html !== body.innerHTML) body.innerHTML = html;
      failures = 0;
      if (status) status.textContent = 'Newest first; this page refreshes by itself.';
    } catch (err) {
      failures += 1;
      if (status) status.textContent = `Could not refresh (${err.message}); retrying.`;
    }
    setTimeout(tick, Math.min(3000 * (failures + 1), 30000));
  };
  setTimeout(tick, 3000);
}

function reloadWhenIdle(el) {
  const seconds = Number(el.dataset.refresh);
  if (!Number.isFinite(seconds) || seconds <= 0) return;
  setTimeout(function again() {
    const active = document.activeElement;
    const editing = active && ['TEXTAREA', 'INPUT', 'SELECT'].includes(active.tagName);
    const typed = [...document.querySelectorAll('textarea')].some((t) => t.value !== '');
    if (editing || typed) {
      setTimeout(again, seconds * 1000);
    } else {
      window.location.reload();
    }
  }, seconds * 1000);
}

document.addEventListener('DOMContentLoaded', () => {
  document.querySelectorAll('tbody[data-live]').forEach(refreshRows);
  document.querySelectorAll('[data-refresh]').forEach(reloadWhenIdle);
});
