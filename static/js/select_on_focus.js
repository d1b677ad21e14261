/* Admin pages: focusing a read-only copy field (an invite link) selects all of it, ready to copy.
 * Here and not in an onfocus= attribute, which the Content-Security-Policy blocks. */
(function () {
  "use strict";
  document.querySelectorAll("input.copy").forEach(function (input) {
    input.addEventListener("focus", function () { input.select(); });
  });
})();
